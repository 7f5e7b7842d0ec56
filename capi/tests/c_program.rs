//! Builds `c/vmm.c` with `-Wall -Wextra -Werror` under AddressSanitizer and
//! UndefinedBehaviorSanitizer against the static library, and runs it (model
//! mode) under both strategies. Any warning, failed check or sanitizer
//! report fails the test.
//!
//! Without a C compiler the test prints SKIPPED and passes, unless
//! `VDPA_REQUIRE_CC=1` (then it fails).

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`: this test runs as `target/<profile>/deps/c_program-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

fn compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    match Command::new(&cc).arg("--version").output() {
        Ok(o) if o.status.success() => Some(cc),
        _ => None,
    }
}

/// The static library cargo built for this test: a library target is
/// compiled with all its crate types, and `cargo test` leaves the staticlib
/// in `target/<profile>/deps` (only `cargo build` copies it up a level).
/// Whichever of the two is newer; built here if neither exists.
fn static_lib() -> PathBuf {
    let dir = profile_dir();
    let newest = |dir: &Path| {
        [dir.join("deps/libvdpa_iova.a"), dir.join("libvdpa_iova.a")]
            .into_iter()
            .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
            .max()
            .map(|(_, p)| p)
    };
    if let Some(lib) = newest(&dir) {
        return lib;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "-p", "vdpa-iova-capi"])
        .current_dir(manifest_dir())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p vdpa-iova-capi failed");
    newest(&dir).expect("libvdpa_iova.a after cargo build")
}

#[test]
fn vmm_c_runs_clean_under_sanitizers() {
    let Some(cc) = compiler() else {
        if std::env::var_os("VDPA_REQUIRE_CC").is_some_and(|v| v == "1") {
            panic!("no C compiler (cc, or $CC) and VDPA_REQUIRE_CC=1");
        }
        eprintln!();
        eprintln!("**********************************************************************");
        eprintln!("* SKIPPED: c_program: no C compiler found (cc, or $CC).             *");
        eprintln!("* capi/c/vmm.c was NOT compiled or run. Set VDPA_REQUIRE_CC=1 to     *");
        eprintln!("* make this a failure.                                               *");
        eprintln!("**********************************************************************");
        return;
    };
    let lib = static_lib();
    println!("linking {}", lib.display());
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmm-sanitized");
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(["-fsanitize=address,undefined", "-fno-omit-frame-pointer"])
        .args(["-fno-sanitize-recover=all"])
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .arg(manifest_dir().join("c/vmm.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm"])
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "compiling c/vmm.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for strategy in ["identity", "qemu"] {
        let run = Command::new(&exe)
            .args(["--strategy", strategy])
            .env(
                "ASAN_OPTIONS",
                "detect_leaks=1:abort_on_error=0:exitcode=86",
            )
            .env(
                "UBSAN_OPTIONS",
                "halt_on_error=1:print_stacktrace=1:exitcode=87",
            )
            .output()
            .expect("run vmm");
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        println!("--- vmm --strategy {strategy}\n{stdout}{stderr}");
        assert!(
            run.status.success(),
            "vmm --strategy {strategy} failed ({}):\n{stdout}\n{stderr}",
            run.status
        );
        for report in ["Sanitizer", "runtime error:", "LeakSanitizer"] {
            assert!(
                !stderr.contains(report),
                "sanitizer report from vmm --strategy {strategy}:\n{stderr}"
            );
        }
        assert!(
            stdout.contains("ok: 13 steps"),
            "vmm did not finish:\n{stdout}"
        );
    }
}

/// `c/translator.c`: the per-queue translator's inline fast path answers as
/// the call does and refuses a stale snapshot, under the sanitizers.
#[test]
fn translator_c_runs_clean_under_sanitizers() {
    let Some(cc) = compiler() else {
        if std::env::var_os("VDPA_REQUIRE_CC").is_some_and(|v| v == "1") {
            panic!("no C compiler (cc, or $CC) and VDPA_REQUIRE_CC=1");
        }
        eprintln!("SKIPPED: c_program: no C compiler found (cc, or $CC): c/translator.c not run");
        return;
    };
    let lib = static_lib();
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("translator-sanitized");
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(["-fsanitize=address,undefined", "-fno-omit-frame-pointer"])
        .args(["-fno-sanitize-recover=all"])
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .arg(manifest_dir().join("c/translator.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm"])
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "compiling c/translator.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe)
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=86",
        )
        .env(
            "UBSAN_OPTIONS",
            "halt_on_error=1:print_stacktrace=1:exitcode=87",
        )
        .output()
        .expect("run translator");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && stdout.contains("translator: ok"),
        "c/translator.c failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
}
