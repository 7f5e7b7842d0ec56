//! The CLI as a user runs it: golden output, JSON shape, exit codes, and
//! every scenario in `scenarios/` planned under both strategies.

use std::path::{Path, PathBuf};
use std::process::Command;

use vdpa_adapter::{run, Scenario, StrategyKind};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vdpa-adapter"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        actual,
        want,
        "output differs from {}; if intended, rerun with UPDATE_GOLDEN=1",
        path.display()
    );
}

#[test]
fn default_plan_table_is_golden() {
    let out = bin().arg("plan").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    golden("plan-default.txt", &String::from_utf8(out.stdout).unwrap());
}

/// The README's quick start shows the default plan's output as it is.
#[test]
fn readme_shows_the_default_plan_as_it_is() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let golden =
        std::fs::read_to_string(repo().join("vdpa-adapter/tests/golden/plan-default.txt")).unwrap();
    let after = readme
        .split_once("Output of the first command")
        .expect("the quick start shows the output")
        .1;
    let block = after
        .split_once("```text\n")
        .and_then(|(_, b)| b.split_once("```"))
        .expect("a text block")
        .0;
    assert_eq!(block, golden, "README.md's quick-start output is stale");
}

#[test]
fn upstream_collision_detail_is_golden() {
    let out = bin()
        .args(["plan", "--strategy", "identity"])
        .arg(repo().join("scenarios/upstream-collision.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    golden(
        "plan-upstream-collision-identity.txt",
        &String::from_utf8(out.stdout).unwrap(),
    );
}

#[test]
fn json_follows_the_documented_format() {
    let out = bin()
        .args(["plan", "--format", "json", "--strategy", "qemu"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 3);
    assert_eq!(v["strategy"], "qemu");
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps[0]["event"], "boot");
    assert_eq!(steps.len(), 12);
    // Both hosts of the completed migration, each step naming its host.
    let hosts: Vec<&str> = steps.iter().map(|s| s["host"].as_str().unwrap()).collect();
    assert_eq!(hosts[0], "source");
    assert_eq!(
        v["migrations"],
        serde_json::json!([{"source": "source", "destination": "destination"}])
    );
    // The source's complete implies the destination's switchover.
    assert_eq!(steps[9]["event"], "complete");
    assert_eq!(steps[9]["implied"], false);
    assert_eq!(
        (&steps[10]["event"], &steps[10]["implied"]),
        (&"switchover".into(), &true.into())
    );
    assert_eq!(hosts[10], "destination");
    assert_eq!(steps[11]["event"], "start");
    assert_eq!(hosts[11], "destination");
    // QEMU maps all guest memory again at the destination's start: inside
    // the downtime. Byte counts are decimal strings.
    assert_eq!(
        steps[11]["cost"]["critical_pinned_bytes"],
        (64u64 << 30).to_string()
    );
    // The control queue's two buffers, mapped with the shadow vrings.
    let bufs = |i: usize| steps[i]["host_buffers"].as_array().unwrap().clone();
    assert!(bufs(2).is_empty(), "QEMU maps the buffers at the switch");
    let b = bufs(3);
    assert_eq!(b.len(), 2);
    for (buf, perm) in b.iter().zip(["ro", "rw"]) {
        assert_eq!(buf["asid"], 0);
        assert_eq!(buf["perm"], perm);
        assert_eq!(buf["size"], "0x1000");
        for k in ["iova", "hva"] {
            assert!(buf[k].as_str().unwrap().starts_with("0x"), "{k}");
        }
    }
    let switch = &steps[3];
    assert_eq!(switch["event"], "svq_switch");
    let ops = switch["ops"].as_array().unwrap();
    assert_eq!(
        switch["cost"]["messages"].as_u64().unwrap(),
        ops.len() as u64
    );
    // Addresses and sizes are hex strings: 64-bit values survive JavaScript.
    let hex = |v: &serde_json::Value| {
        u64::from_str_radix(v.as_str().unwrap().strip_prefix("0x").unwrap(), 16).unwrap()
    };
    let upd = ops.iter().find(|o| o["kind"] == "update").unwrap();
    for k in ["phase", "asid", "iova", "size", "hva", "perm"] {
        assert!(!upd[k].is_null(), "update op lacks {k}");
    }
    assert_eq!(switch["svq"].as_array().unwrap().len(), 17 * 3);
    // QEMU moves all guest memory: both regions are displaced in SVQ mode.
    assert_eq!(switch["displaced"].as_array().unwrap().len(), 2);
    let pinned: u64 = ops
        .iter()
        .filter(|o| o["kind"] == "update" && o["phase"] == "critical")
        .map(|o| hex(&o["size"]))
        .sum();
    assert_eq!(switch["cost"]["critical_pinned_bytes"], pinned.to_string());
}

#[test]
fn errors_name_file_event_and_field_and_set_exit_codes() {
    let dir = std::env::temp_dir().join(format!("vdpa-adapter-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[events]]\nkind = \"hotplug\"\ngpa = 0\nsize = 4096\n",
    )
    .unwrap();
    let out = bin().arg("plan").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml: event 1 (hotplug): field `hva`: missing"),
        "{err}"
    );
    let refused = dir.join("refused.toml");
    std::fs::write(&refused, "[[guest.regions]]\ngpa = 0\nsize = 4096\nhva = 0x1000\n[[events]]\nkind = \"unplug\"\ngpa = 0x2000\n").unwrap();
    let out = bin().arg("plan").arg(&refused).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step 1 (unplug)") && err.contains("no guest region starts at gpa 0x2000"),
        "{err}"
    );
    // A missing file is bad input, and its cause is printed once.
    let out = bin()
        .arg("plan")
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause once: {err}"
    );
    assert!(!err.contains("caused by"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every exit code is documented in --help.
#[test]
fn help_documents_the_exit_codes() {
    let out = bin().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for line in [
        "Exit status:",
        "  2  bad input",
        "  3  a plan",
        "  4  environment",
    ] {
        assert!(help.contains(line), "{line:?} missing from --help:\n{help}");
    }
}

/// A reader that goes away (`| head`) ends the CLI quietly: no panic, no
/// backtrace, success.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    for args in [&["plan"][..], &["plan", "--format", "json"][..]] {
        let mut child = bin()
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the pipe before the CLI writes: its write then fails with
        // EPIPE (SIGPIPE is ignored in Rust programs), however short the output.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn every_scenario_file_plans_cleanly_under_every_strategy() {
    let mut n = 0;
    // The rig's scenarios too: they run on real devices in `.ci/rig/run`.
    // The built-in default lives in the package (`cargo package` takes only
    // what is inside it).
    let files = std::fs::read_dir(repo().join("scenarios"))
        .unwrap()
        .chain(std::fs::read_dir(repo().join(".ci/rig")).unwrap())
        .chain(std::fs::read_dir(repo().join("vdpa-adapter/scenarios")).unwrap());
    for e in files {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let name = p.display().to_string();
            let scn = Scenario::parse(&std::fs::read_to_string(&p).unwrap(), &name).unwrap();
            let kinds = StrategyKind::available(&scn);
            for &k in &kinds {
                // Every plan replays on the kernel model and every layout
                // checks out; a strategy may stop where the device or QEMU
                // cannot go on, and says so.
                let r = run(&scn, &name, k).unwrap_or_else(|e| panic!("{e}"));
                if r.stopped.is_none() {
                    assert_eq!(r.steps.len(), scn.events.len() + 1);
                }
            }
            // Our best strategy for the device never stops, unless the
            // scenario fills the device's table on purpose.
            let best = kinds[kinds.len() - 2];
            let r = run(&scn, &name, best).unwrap();
            assert!(
                r.stopped.is_none() || scn.max_entries.is_some(),
                "{name}: {best:?} stopped: {:?}",
                r.stopped
            );
            n += 1;
        }
    }
    assert!(n >= 12, "scenarios/ and .ci/rig/ hold {n} files");
}

#[test]
fn a_full_table_stops_every_strategy_where_the_kernel_would_refuse() {
    let path = repo().join("scenarios/entry-limit.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let scn = Scenario::parse(&text, "entry-limit.toml").unwrap();
    assert_eq!(scn.max_entries, Some(38));
    // 2 regions + 17 queues x 2 areas = 36; the second DIMM is entry 38, the
    // third would be 39.
    for k in StrategyKind::available(&scn) {
        let r = run(&scn, "entry-limit.toml", k).unwrap();
        let stop = r.stopped.unwrap_or_else(|| panic!("{k:?} did not stop"));
        assert_eq!((stop.step, stop.event), (5, "hotplug"), "{k:?}");
        assert!(stop.reason.contains("38 entries"), "{}", stop.reason);
    }
    // Without the limit nothing stops.
    let open = Scenario {
        max_entries: None,
        ..scn
    };
    for k in StrategyKind::available(&open) {
        let r = run(&open, "entry-limit.toml", k).unwrap();
        assert!(r.stopped.is_none());
        // What the table needed at its fullest: 2 regions, 34 vring areas,
        // 3 DIMMs.
        let peak = r.steps.iter().map(|s| s.peak_entries).max().unwrap();
        assert_eq!(peak, 39, "{k:?}");
    }
    // The dry run refuses the same step up front, as the adapter does on a
    // device whose vhost_vdpa has that limit: exit 4, nothing sent.
    let out = bin()
        .args(["apply", "--dry-run"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("step 5 (hotplug)"), "{err}");
    assert!(err.contains("already holds the 38 entries"), "{err}");
    assert!(err.contains("nothing was sent"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
}

#[test]
fn apply_dry_run_runs_every_step_on_the_kernel_model() {
    for (file, strategy, steps) in [
        ("reset.toml", "identity", 6),
        ("viommu.toml", "identity", 8),
        ("separate-asid.toml", "identity-asid", 5),
        ("upstream-collision.toml", "qemu", 5),
    ] {
        let out = bin()
            .args(["apply", "--dry-run", "--strategy", strategy])
            .arg(repo().join("scenarios").join(file))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.lines().count(), steps + 1, "{file}: {text}");
    }
    // The identity strategy cannot place that hotplug: refused, exit 2.
    let out = bin()
        .args(["apply", "--dry-run"])
        .arg(repo().join("scenarios/separate-asid.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of IOVA space"));
}

#[test]
fn device_commands_name_the_device_and_exit_4_without_one() {
    for args in [
        vec!["probe", "/nonexistent/vhost-vdpa-9"],
        vec![
            "bench",
            "--device",
            "/nonexistent/vhost-vdpa-9",
            "--guest-mem",
            "1GiB",
        ],
        // A small scenario: the host memory check before the device is
        // opened must not depend on what else this machine runs.
        vec![
            "apply",
            ".ci/rig/rig-sim.toml",
            "--device",
            "/nonexistent/vhost-vdpa-9",
        ],
    ] {
        let out = bin().current_dir(repo()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("/nonexistent/vhost-vdpa-9: open"),
            "{args:?}: {err}"
        );
    }
    // apply needs a device or --dry-run; --anon and --memfd exclude each other.
    for args in [
        vec!["apply", "scenarios/reset.toml"],
        vec![
            "apply",
            "scenarios/reset.toml",
            "--dry-run",
            "--anon",
            "--memfd",
        ],
    ] {
        let out = bin().current_dir(repo()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// `apply` compares what a scenario needs with what the host has before it
/// opens the device or allocates a page (64 GiB on a smaller host would
/// otherwise end in the OOM killer).
#[test]
fn apply_refuses_a_scenario_larger_than_the_host() {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    let Some(avail) = avail else {
        eprintln!("SKIPPED: no MemAvailable in /proc/meminfo");
        return;
    };
    let dir = std::env::temp_dir().join(format!("vdpa-adapter-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Twice what the host has, rounded to whole GiB.
    let gib = (avail * 2).div_ceil(1 << 30);
    let big = dir.join("big.toml");
    std::fs::write(
        &big,
        format!("[[guest.regions]]\ngpa = 0\nsize = \"{gib}G\"\nhva = 0x7f0000000000\n"),
    )
    .unwrap();
    let out = bin()
        .args(["apply", "--device", "/nonexistent/vhost-vdpa-9"])
        .arg(&big)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!("the scenario needs {gib} GiB of memory"))
            && err.contains("available"),
        "{err}"
    );
    assert!(
        !err.contains("/nonexistent"),
        "refused before opening the device: {err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Addresses above 2^53 (a device range ending at 2^64 - 1, a window above
/// it) come out exact in JSON, and `apply --format json` documents the run.
#[test]
fn json_keeps_64_bit_addresses_exact() {
    let out = bin().args(["plan", "--format", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let svq = v["steps"][2]["svq"].as_array().unwrap();
    assert!(svq
        .iter()
        .all(|a| a["hva"].as_str().unwrap().starts_with("0x")));
    let dir = std::env::temp_dir().join(format!("vdpa-adapter-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("top.toml");
    std::fs::write(
        &f,
        "[[guest.regions]]\ngpa = \"0xffff_ffff_fff0_0000\"\nsize = \"1MiB\"\nhva = 0x7f0000000000\n",
    )
    .unwrap();
    let out = bin()
        .args(["plan", "--format", "json"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ops = v["steps"][0]["ops"].as_array().unwrap();
    assert_eq!(ops[0]["iova"], "0xfffffffffff00000");
    let out = bin()
        .args([
            "apply",
            "--dry-run",
            "--format",
            "json",
            "--host",
            "destination",
        ])
        .arg(repo().join(".ci/rig/rig-migration.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 3);
    assert_eq!(v["host"], "destination");
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.last().unwrap()["event"], "start");
    assert_eq!(steps.last().unwrap()["critical_messages"], 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Completions and the man page come from the clap definitions: every
/// subcommand is in them, and the man page carries the exit codes.
#[test]
fn completions_and_man_page_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        for sub in ["plan", "probe", "apply", "bench"] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = bin().arg("man").output().unwrap();
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH vdpa-adapter 1"),
        "{man}"
    );
    for want in ["plan", "apply", "bench", "bad input"] {
        assert!(man.contains(want), "the man page lacks {want}");
    }
}

/// `plan --svg DIR` draws one well-formed picture per step, with every
/// region of the scenario labelled, every strategy a row.
#[test]
fn pictures_are_well_formed_and_show_every_region() {
    let dir = std::env::temp_dir().join(format!("vdpa-adapter-svg-{}", std::process::id()));
    for file in [
        "scenarios/upstream-collision.toml",
        "scenarios/separate-asid.toml",
    ] {
        let _ = std::fs::remove_dir_all(&dir);
        let out = bin()
            .args(["plan", "--svg"])
            .arg(&dir)
            .arg(repo().join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = repo().join(file);
        let scn = Scenario::parse(&std::fs::read_to_string(&path).unwrap(), file).unwrap();
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
            assert_eq!(doc.root_element().tag_name().name(), "svg");
            for r in &scn.boot {
                assert!(
                    text.contains(&format!("gpa {:#x}", r.gpa.0)),
                    "{file}: region {:#x} missing",
                    r.gpa.0
                );
            }
            // Every strategy is a row from boot on (a strategy that stops
            // partway has no row in the steps after).
            let boot = text.contains("step 0: boot");
            for k in StrategyKind::available(&scn).into_iter().filter(|_| boot) {
                let name = match k {
                    StrategyKind::Identity => "identity asid 0",
                    StrategyKind::IdentityAsid => "identity-asid asid 0",
                    StrategyKind::Qemu => "qemu asid 0",
                };
                assert!(text.contains(name), "{file}: no row {name}");
            }
            n += 1;
        }
        assert_eq!(n, scn.events.len() + 1, "{file}: one picture per step");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README shows the upstream collision sequence (hotplug into the vring
/// window during SVQ, then failback), identity beside qemu, as `plan --svg`
/// draws it now; `UPDATE_GOLDEN=1` redraws it.
#[test]
fn readme_pictures_are_current() {
    let dir = std::env::temp_dir().join(format!("vdpa-adapter-readme-svg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = bin()
        .args(["plan", "--svg"])
        .arg(&dir)
        .arg(repo().join("scenarios/upstream-collision.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for step in ["step-03-hotplug.svg", "step-04-failback.svg"] {
        let committed = repo()
            .join("scenarios/pictures")
            .join(format!("upstream-collision-{step}"));
        let now = std::fs::read_to_string(dir.join(step)).unwrap();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&committed, &now).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&committed).unwrap(),
            now,
            "{} is not what plan --svg draws now (UPDATE_GOLDEN=1 redraws it)",
            committed.display()
        );
        assert!(
            readme.contains(&format!("scenarios/pictures/upstream-collision-{step}")),
            "the README shows {step}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `show` names a missing device as an environment fault; `list` answers
/// on a host without vDPA devices too, in both formats.
#[test]
fn list_and_show_read_without_opening() {
    let out = bin().arg("list").output().unwrap();
    assert!(out.status.success());
    let out = bin().args(["list", "--format", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 3);
    assert!(v["devices"].is_array());
    let out = bin()
        .args(["show", "no-such-vdpa-device"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such vDPA device"), "{err}");
}

/// `apply --host` takes any host of the scenario by name, and refuses one
/// the scenario does not have (instead of running no step).
#[test]
fn apply_plays_any_host_and_refuses_a_missing_one() {
    let scn = repo().join("scenarios/migrated-twice.toml");
    let out = bin()
        .args(["apply", "--dry-run", "--host", "destination 2"])
        .arg(&scn)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        events,
        ["incoming", "host_buffers", "switchover", "reset", "start"],
        "{text}"
    );
    for (host, want) in [
        (
            "destination 3",
            "the scenario has 3 host(s), the last the destination 2",
        ),
        (
            "destination 1",
            "expected source, destination, or destination N",
        ),
    ] {
        let out = bin()
            .args(["apply", "--dry-run", "--host", host])
            .arg(&scn)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{host}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(want), "{host}: {err}");
    }
}
