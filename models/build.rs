//! Build script of cls-models: embed libtorch's lib folder as RUNPATH (see ../build/rpath.rs) and
//! compile the small C++ shim in csrc/amp.cpp against libtorch's headers.
#[path = "../build/rpath.rs"]
mod rpath;

fn main() {
    rpath::main();
    println!("cargo:rerun-if-changed=csrc/amp.cpp");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not export DEP_TCH_LIBTORCH_LIB: is LIBTORCH set (scripts/setup)?");
    };
    let include = std::path::Path::new(&lib).join("../include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/amp.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("cls_amp");
}
