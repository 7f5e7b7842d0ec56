//! Replays every committed fuzz corpus file (`fuzz/corpus/TARGET/`) through
//! the fuzz target's body on stable Rust, so `cargo test` catches a
//! regression on any input the fuzzers ever kept, and names the file.

use std::path::PathBuf;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{target}: {} fails", p.display());
        }
        n += 1;
    }
    assert!(n > 0, "{} holds no corpus", dir.display());
}

#[test]
fn planner_events_corpus() {
    replay("planner_events", proptests::fuzz::planner_events);
}

#[test]
fn kernel_model_corpus() {
    replay("kernel_model", proptests::fuzz::kernel_model);
}

#[test]
fn scenario_text_corpus() {
    replay("scenario_text", proptests::fuzz::scenario_text);
}

#[test]
fn msg_codec_corpus() {
    replay("msg_codec", proptests::fuzz::msg_codec);
}

#[test]
fn migration_hosts_corpus() {
    replay("migration_hosts", proptests::migration::migration_hosts);
}

/// Found by `planner_events` in its first minute: a valid region of
/// `2^64 - page` bytes at GPA 0 made the page-level model allocate 2^52
/// pages (out of memory). The generator now keeps valid sizes small.
#[test]
fn regression_oom_huge_region() {
    let data = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/planner_events/oom-huge-region"),
    )
    .unwrap();
    proptests::fuzz::planner_events(&data);
}
