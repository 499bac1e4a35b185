//! cls-infer's build script: the git commit for `--version` (build/version.rs).
// libtorch_version() is for the crates that link libtorch; cls-infer never does.
#[allow(dead_code)]
#[path = "version.rs"]
mod version;

fn main() {
    version::git_commit();
}
