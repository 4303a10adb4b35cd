//! Links with `link.x` (memory map and sections of the image) for the MCU target.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    if std::env::var("TARGET").is_ok_and(|t| t.starts_with("thumb")) {
        println!("cargo:rustc-link-arg=-T{dir}/link.x");
    }
    println!("cargo:rerun-if-changed=link.x");
}
