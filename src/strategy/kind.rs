//! The one place a strategy is chosen and built: the CLI, the C ABI, the
//! benches and the tests all go through [`StrategyKind::build`], so a new
//! strategy is one more arm here and the compiler finds every other.

use crate::caps::DeviceCaps;
use crate::error::PlanError;
use crate::strategy::identity::IdentityPlanner;
use crate::strategy::qemu::QemuPlanner;
use crate::strategy::Strategy;

/// Which strategy plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    /// [`IdentityPlanner`]: guest memory stays identity-mapped, the vrings
    /// go in a reserved window.
    Identity {
        /// The vrings in address space [`crate::VRING_ASID`] instead
        /// (needs `desc_asid` and two address spaces).
        separate_vring_asid: bool,
    },
    /// [`QemuPlanner`]: what QEMU does today, the baseline.
    Qemu,
}

/// What a strategy is built with besides the device; each strategy reads
/// the options it has and ignores the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StrategyOptions {
    /// The exclusive end of guest-physical memory
    /// ([`crate::IdentityPlannerBuilder::max_gpa`]; identity only).
    pub max_gpa: Option<u64>,
    /// The guest has a vIOMMU whose highest guest IOVA is this.
    pub viommu_last: Option<u64>,
    /// Entries the device holds per address space
    /// ([`crate::IdentityPlannerBuilder::max_entries`]; identity only).
    pub max_entries: Option<u64>,
}

impl StrategyKind {
    /// The strategy, with nothing mapped yet.
    ///
    /// # Errors
    /// As [`crate::IdentityPlannerBuilder::build`] and [`QemuPlanner::new`].
    pub fn build(
        self,
        caps: DeviceCaps,
        o: &StrategyOptions,
    ) -> Result<Box<dyn Strategy + Send>, PlanError> {
        Ok(match self {
            StrategyKind::Identity {
                separate_vring_asid,
            } => {
                let mut b = IdentityPlanner::builder(caps).separate_vring_asid(separate_vring_asid);
                if let Some(m) = o.max_gpa {
                    b = b.max_gpa(m);
                }
                if let Some(l) = o.viommu_last {
                    b = b.viommu(l);
                }
                if let Some(n) = o.max_entries {
                    b = b.max_entries(n);
                }
                Box::new(b.build()?)
            }
            StrategyKind::Qemu => Box::new(match o.viommu_last {
                Some(l) => QemuPlanner::with_viommu(caps, l)?,
                None => QemuPlanner::new(caps)?,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Gpa;
    use crate::caps::DeviceCaps;

    fn build(
        kind: StrategyKind,
        o: StrategyOptions,
    ) -> Result<Box<dyn Strategy + Send>, PlanError> {
        kind.build(DeviceCaps::default(), &o)
    }

    #[test]
    fn each_kind_builds_its_strategy_with_its_options() {
        let identity = StrategyKind::Identity {
            separate_vring_asid: false,
        };
        let s = build(identity, StrategyOptions::default()).unwrap();
        assert_eq!(
            s.name(),
            IdentityPlanner::new(DeviceCaps::default(), None)
                .unwrap()
                .name()
        );
        let q = build(StrategyKind::Qemu, StrategyOptions::default()).unwrap();
        assert_eq!(
            q.name(),
            QemuPlanner::new(DeviceCaps::default()).unwrap().name()
        );
        assert_ne!(s.name(), q.name());
        // The separate vring address space reaches the builder: the default
        // device has one address space, so it is refused.
        let separate = StrategyKind::Identity {
            separate_vring_asid: true,
        };
        assert!(matches!(
            build(separate, StrategyOptions::default()),
            Err(PlanError::Unsupported { .. })
        ));
        // A vIOMMU reaches both: nothing is translated before the guest maps it.
        let viommu = StrategyOptions {
            viommu_last: Some((1 << 39) - 1),
            ..StrategyOptions::default()
        };
        for kind in [identity, StrategyKind::Qemu] {
            let plain = build(kind, StrategyOptions::default()).unwrap();
            let with = build(kind, viommu).unwrap();
            let mut plain = plain;
            let mut with = with;
            let ram = [crate::event::RegionSpec {
                gpa: Gpa(0),
                size: 1 << 20,
                hva: crate::addr::Hva(1 << 40),
                readonly: false,
            }];
            plain.add_regions(&ram).unwrap();
            with.add_regions(&ram).unwrap();
            assert!(plain.translate(Gpa(0), 4096).is_ok(), "{kind:?}");
            assert!(with.translate(Gpa(0), 4096).is_err(), "{kind:?}");
        }
    }
}
