//! The checked-in header is what cbindgen makes of the sources now.
//!
//! `UPDATE_HEADER=1 cargo test -p vdpa-iova-capi --test header` rewrites it.

use std::path::Path;

#[test]
fn header_matches_the_sources() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses the sources")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = dir.join("include/vdpa_iova.h");
    if std::env::var_os("UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write include/vdpa_iova.h");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/vdpa_iova.h is stale: run `UPDATE_HEADER=1 cargo test -p vdpa-iova-capi --test header` \
         and commit the result\n--- generated ---\n{generated}"
    );
}
