//! Gives the shared object its SONAME, so that a VMM linked against
//! `libvdpa_iova.so` records `libvdpa_iova.so.0` (what `install.sh` installs).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libvdpa_iova.so.0");
    }
}
