//! A scenario with real memory in this process, applied to the kernel model
//! as a use_va device: memfd memory passes the adapter's shared-mapping check
//! against this process's real /proc/self/maps, private anonymous memory is
//! refused before anything is sent.

use vdpa_adapter::apply::Applier;
use vdpa_adapter::host::procfs::Limits;
use vdpa_adapter::memory::Backing;
use vdpa_adapter::scenario::Host;
use vdpa_adapter::session::{run_on_device, DeviceRun, HostMemory};
use vdpa_adapter::sink::ModelDevice;
use vdpa_adapter::uapi::MsgFormat;
use vdpa_adapter::{AdapterError, Scenario, StrategyKind};

const SCENARIO: &str = r#"
[device]
pinning = false
iova_last = "0xffff_ffff"
[[guest.regions]]
gpa = 0
size = "8MiB"
hva = 0x1000_0000_0000
[[events]]
kind = "svq_prepare"
queues = 2
queue_size = 64
hva = 0x7e00_0000_0000
[[events]]
kind = "svq_switch"
[[events]]
kind = "hotplug"
gpa = "8MiB"
size = "2MiB"
hva = 0x1100_0000_0000
[[events]]
kind = "failback"
[[events]]
kind = "incoming"
[[events]]
kind = "reset"
host = "destination"
[[events]]
kind = "start"
"#;

fn run(backing: Backing) -> (Result<usize, AdapterError>, usize) {
    run_host(backing, Host::SOURCE)
}

fn run_host(backing: Backing, host: Host) -> (Result<usize, AdapterError>, usize) {
    let scn = Scenario::parse(SCENARIO, "inline").unwrap();
    let format = MsgFormat::V2 { asid: false };
    let mut a = Applier::new(ModelDevice::new(&scn.caps, format), scn.caps, format);
    let mut mem = HostMemory::new(Some(backing));
    let r = run_on_device(
        DeviceRun {
            scn: &scn,
            file: "inline",
            device: "model",
            caps: scn.caps,
            kind: StrategyKind::Identity,
            host,
            limits: Some(Limits {
                memlock: None,
                pinned_now: 0,
                max_entries: None,
            }),
        },
        &mut a,
        &mut mem,
        |_, _| {},
    )
    .map(|steps| steps.len());
    let sent = a.device().received;
    (r, sent)
}

#[test]
fn memfd_memory_is_mapped_and_tagged() {
    let (r, sent) = run(Backing::Memfd);
    assert_eq!(r.unwrap(), 5);
    assert!(sent > 0);
}

#[test]
fn private_anonymous_memory_is_refused_before_the_kernel_can_skip_it() {
    let (r, sent) = run(Backing::Anon);
    let e = r.unwrap_err();
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(chain.contains("private anonymous memory"), "{chain}");
    assert!(chain.contains("silently skips"), "{chain}");
    assert_eq!(sent, 0, "nothing was sent");
}

/// The destination's guest memory gets real memory too: its `incoming`
/// regions are rewritten like boot's, so the shared-mapping check passes.
#[test]
fn the_destination_gets_real_memory() {
    let (r, sent) = run_host(Backing::Memfd, Host::DESTINATION);
    assert_eq!(r.unwrap(), 3, "incoming, reset, start");
    assert!(sent > 0);
}
