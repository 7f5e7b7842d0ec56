//! Random event sequences against the identity planner, checked after every
//! step against the page-level reference model (see `proptests::harness`).
//!
//! The reference state machine generates concrete events from the reference
//! state with [`gen::guided_event`]: mostly events the current mode allows,
//! aimed at the deep states (SVQ with displaced memory, vIOMMU maps while
//! prepared or in SVQ mode, resets in every mode, a destination), and one in
//! [`gen::UNGUIDED_ONE_IN`] drawn from the edge-biased [`gen::event`] for the
//! error paths. The reference keeps a planner of its own only to know where
//! the vrings and the window are and whether an event ran out of IOVA space;
//! the system under test checks every step independently of it, against the
//! page model, which it updates only with what its planner accepted.
//!
//! `PROPTEST_STATS=1` prints, after every case, the running totals: events
//! accepted, refused and out of IOVA, the final modes, the depths (accepted
//! events per case) and how many cases reached each deep state.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use proptests::gen::{self, RawEvent};
use proptests::harness::{Harness, Setup};
use proptests::model::{Expect, ModelMode, PageModel};
use vdpa_iova_planner::{Event, IdentityPlanner, Mode, Strategy as _};

struct Reference;

/// The reference: the setup, the page model, and a planner that has seen
/// the same events (for generation only).
#[derive(Clone, Debug)]
struct RefState {
    setup: Setup,
    model: PageModel,
    planner: IdentityPlanner,
}

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
    type State = RefState;
    type Transition = Event;

    fn init_state() -> BoxedStrategy<Self::State> {
        (
            any::<u8>(),
            any::<u16>(),
            (any::<u8>(), any::<u64>()),
            (any::<u8>(), any::<u64>()),
        )
            .prop_map(|(r, f, m, v)| {
                let setup = gen::setup(r, f, m, v);
                RefState {
                    setup,
                    model: PageModel::new(setup.caps, setup.viommu_last),
                    planner: setup.build(),
                }
            })
            .boxed()
    }

    fn transitions(state: &Self::State) -> BoxedStrategy<Self::Transition> {
        let s = state.clone();
        raw_event()
            .prop_map(move |r| gen::guided_event(&s.setup, &s.model, &s.planner, &r))
            .boxed()
    }

    fn apply(mut state: Self::State, t: &Self::Transition) -> Self::State {
        // The model follows what the planner accepted (an out-of-IOVA refusal
        // included); a disagreement between them is the system under test's
        // to report, so the model never applies what it refuses.
        if state.planner.apply(t).is_ok() && state.model.expect(t) != Expect::Refuse {
            state.model.apply(t);
        }
        state
    }
}

/// The harness, and which deep states this case reached.
struct Sut {
    h: Harness,
    reached: u32,
}

/// Deep states, as bits of `Sut::reached`, with their names for the stats.
const DEEP: [&str; 16] = [
    "svq+displaced",
    "viommu-map-prepared",
    "viommu-map-svq",
    "reset-passthrough",
    "reset-prepared",
    "reset-svq",
    "reset-completed",
    "reset-incoming",
    "incoming",
    "start",
    "host-buffers",
    "switchover",
    "reset-switchover",
    "viommu-map-switchover",
    "start-after-switchover",
    "migrated-again",
];

const MODES: [ModelMode; 6] = [
    ModelMode::Passthrough,
    ModelMode::Prepared,
    ModelMode::Svq,
    ModelMode::Completed,
    ModelMode::Incoming,
    ModelMode::Switchover,
];

fn mode_index(m: ModelMode) -> usize {
    MODES
        .iter()
        .position(|&x| x == m)
        .expect("every mode listed")
}

/// Depth buckets: accepted events per case.
const DEPTHS: [(u64, &str); 7] = [
    (0, "0"),
    (1, "1"),
    (4, "2-4"),
    (8, "5-8"),
    (16, "9-16"),
    (32, "17-32"),
    (u64::MAX, "33+"),
];

struct Stats {
    events: [AtomicU64; 3],
    cases: AtomicU64,
    modes: [AtomicU64; 6],
    depths: [AtomicU64; 7],
    deep: [AtomicU64; 16],
}

static STATS: Stats = Stats {
    events: [const { AtomicU64::new(0) }; 3],
    cases: AtomicU64::new(0),
    modes: [const { AtomicU64::new(0) }; 6],
    depths: [const { AtomicU64::new(0) }; 7],
    deep: [const { AtomicU64::new(0) }; 16],
};

fn print_stats() {
    let cases = STATS.cases.load(Relaxed).max(1);
    let pct = |n: u64| format!("{n} ({:.1}%)", n as f64 * 100.0 / cases as f64);
    let [acc, refd, oom] = [0, 1, 2].map(|i| STATS.events[i].load(Relaxed));
    let modes: Vec<String> = MODES
        .iter()
        .zip(&STATS.modes)
        .map(|(m, n)| format!("{m:?} {}", pct(n.load(Relaxed))))
        .collect();
    let depths: Vec<String> = DEPTHS
        .iter()
        .zip(&STATS.depths)
        .map(|((_, name), n)| format!("{name}: {}", pct(n.load(Relaxed))))
        .collect();
    let deep: Vec<String> = DEEP
        .iter()
        .zip(&STATS.deep)
        .map(|(name, n)| format!("{name} {}", pct(n.load(Relaxed))))
        .collect();
    eprintln!(
        "cases {cases} accepted {acc} refused {refd} ({:.1}%) out-of-iova {oom} mean depth {:.1}\n  final modes: {}\n  depths: {}\n  reached: {}",
        refd as f64 * 100.0 / (acc + refd).max(1) as f64,
        acc as f64 / cases as f64,
        modes.join(", "),
        depths.join(", "),
        deep.join(", ")
    );
}

struct PlannerTest;

impl StateMachineTest for PlannerTest {
    type SystemUnderTest = Sut;
    type Reference = Reference;

    fn init_test(ref_state: &RefState) -> Sut {
        Sut {
            h: Harness::new(&ref_state.setup),
            reached: 0,
        }
    }

    fn apply(mut sut: Sut, _: &RefState, t: Event) -> Sut {
        let mode = sut.h.model.mode;
        let accepted = sut.h.stats.0;
        sut.h.step(&t);
        if sut.h.stats.0 > accepted {
            let started = 1 << DEEP.iter().position(|&d| d == "start").expect("listed");
            let was_started = sut.reached & started != 0;
            let mut bit = |name: &str| {
                sut.reached |= 1 << DEEP.iter().position(|&d| d == name).expect("listed");
            };
            match (&t, mode) {
                (Event::ViommuMap { .. }, ModelMode::Prepared) => bit("viommu-map-prepared"),
                (Event::ViommuMap { .. }, ModelMode::Svq) => bit("viommu-map-svq"),
                (Event::Reset, ModelMode::Passthrough) => bit("reset-passthrough"),
                (Event::Reset, ModelMode::Prepared) => bit("reset-prepared"),
                (Event::Reset, ModelMode::Svq) => bit("reset-svq"),
                (Event::Reset, ModelMode::Completed) => bit("reset-completed"),
                (Event::Reset, ModelMode::Incoming) => bit("reset-incoming"),
                (Event::Reset, ModelMode::Switchover) => bit("reset-switchover"),
                (Event::ViommuMap { .. }, ModelMode::Switchover) => bit("viommu-map-switchover"),
                (Event::Incoming(_), _) => bit("incoming"),
                (Event::Switchover, _) => bit("switchover"),
                (Event::Start, ModelMode::Switchover) => {
                    bit("start");
                    bit("start-after-switchover");
                }
                (Event::Start, _) => bit("start"),
                // A destination that started runs the VM: its own
                // migration's switch, after an earlier `start`.
                (Event::SvqSwitch(_) | Event::Complete, _) if was_started => bit("migrated-again"),
                (Event::HostBuffers(_), _) => bit("host-buffers"),
                _ => {}
            }
            if sut.h.planner.mode() == Mode::Svq && !sut.h.planner.displaced().is_empty() {
                bit("svq+displaced");
            }
        }
        sut
    }

    fn teardown(sut: Sut, _: RefState) {
        let h = &sut.h;
        for (i, n) in [h.stats.0, h.stats.1, h.stats.2].into_iter().enumerate() {
            STATS.events[i].fetch_add(n, Relaxed);
        }
        STATS.cases.fetch_add(1, Relaxed);
        STATS.modes[mode_index(h.model.mode)].fetch_add(1, Relaxed);
        let d = DEPTHS
            .iter()
            .position(|&(max, _)| h.stats.0 <= max)
            .expect("the last bucket is unbounded");
        STATS.depths[d].fetch_add(1, Relaxed);
        for (i, n) in STATS.deep.iter().enumerate() {
            n.fetch_add(u64::from(sut.reached >> i & 1), Relaxed);
        }
        if std::env::var_os("PROPTEST_STATS").is_some() {
            print_stats();
        }
    }
}

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
