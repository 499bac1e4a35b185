//! Build script shared by every crate that links libtorch: embed the libtorch library folder as
//! the binary's RUNPATH, so `target/release/cls-train` runs with no LD_LIBRARY_PATH.
//! `torch-sys` (links = "tch") exports that folder to its direct dependents as DEP_TCH_LIBTORCH_LIB.
pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let lib = std::fs::canonicalize(&lib).map(|p| p.display().to_string()).unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
