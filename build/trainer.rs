//! cls-train's build script: libtorch's lib folder as RUNPATH (build/rpath.rs) and the facts
//! `--version` prints (build/version.rs).
#[path = "rpath.rs"]
mod rpath;
#[path = "version.rs"]
mod version;

fn main() {
    rpath::main();
    version::git_commit();
    version::libtorch_version();
}
