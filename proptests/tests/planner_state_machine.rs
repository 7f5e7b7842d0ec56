//! Random event sequences against the identity planner, checked after every
//! step against the page-level reference model (see `proptests::harness`).
//!
//! The reference state machine generates concrete events from the reference
//! state (an existing region to unplug, memory to map); the system under test
//! keeps its own copy of the reference, updated only by what the planner
//! accepted, because only the planner knows when a small device range has run
//! out of IOVA space.

use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use proptests::gen::{self, RawEvent};
use proptests::harness::{Harness, Setup};
use proptests::model::{Expect, PageModel};
use vdpa_iova_planner::Event;

struct Reference;

fn raw_event() -> impl Strategy<Value = RawEvent> {
    (
        any::<u8>(),
        (any::<u8>(), any::<u64>()),
        (any::<u8>(), any::<u64>()),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(kind, a, b, size, flags)| RawEvent {
            kind,
            a,
            b,
            size,
            flags,
        })
}

impl ReferenceStateMachine for Reference {
    type State = (Setup, PageModel);
    type Transition = Event;

    fn init_state() -> BoxedStrategy<Self::State> {
        (
            any::<u8>(),
            any::<u16>(),
            (any::<u8>(), any::<u64>()),
            (any::<u8>(), any::<u64>()),
        )
            .prop_map(|(r, f, m, v)| {
                let s = gen::setup(r, f, m, v);
                (s, PageModel::new(s.caps, s.viommu_last))
            })
            .boxed()
    }

    fn transitions(state: &Self::State) -> BoxedStrategy<Self::Transition> {
        let (setup, model) = state.clone();
        raw_event()
            .prop_map(move |r| gen::event(&setup, &model, &r))
            .boxed()
    }

    fn apply(mut state: Self::State, t: &Self::Transition) -> Self::State {
        if state.1.expect(t) != Expect::Refuse {
            state.1.apply(t);
        }
        state
    }
}

struct PlannerTest;

impl StateMachineTest for PlannerTest {
    type SystemUnderTest = Harness;
    type Reference = Reference;

    fn init_test(ref_state: &(Setup, PageModel)) -> Harness {
        Harness::new(&ref_state.0)
    }

    fn apply(mut h: Harness, _: &(Setup, PageModel), t: Event) -> Harness {
        h.step(&t);
        h
    }

    fn teardown(h: Harness, _: (Setup, PageModel)) {
        use std::sync::atomic::Ordering::Relaxed;
        STATS[0].fetch_add(h.stats.0, Relaxed);
        STATS[1].fetch_add(h.stats.1, Relaxed);
        STATS[2].fetch_add(h.stats.2, Relaxed);
        STATS[3].fetch_add(
            u64::from(h.model.mode != proptests::model::ModelMode::Passthrough),
            Relaxed,
        );
        STATS[4].fetch_add(h.model.pages.len() as u64, Relaxed);
        if std::env::var_os("PROPTEST_STATS").is_some() {
            eprintln!(
                "accepted {} refused {} out-of-iova {} left-passthrough {} pages {}",
                STATS[0].load(Relaxed),
                STATS[1].load(Relaxed),
                STATS[2].load(Relaxed),
                STATS[3].load(Relaxed),
                STATS[4].load(Relaxed)
            );
        }
    }
}

/// Accepted, refused, out-of-IOVA events, cases that left passthrough, guest pages at the end.
static STATS: [std::sync::atomic::AtomicU64; 5] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 5];

prop_state_machine! {
    #![proptest_config(Config {
        cases: proptests::cases(),
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        .. Config::default()
    })]
    #[test]
    fn planner_matches_the_page_model(sequential 1..64 => PlannerTest);
}
