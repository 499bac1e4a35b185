//! Build-time facts for `--version`, shared by the binaries' build scripts (included with
//! `#[path]`): the git commit of the source (`CLS_GIT_COMMIT`, with `-dirty` when the work tree
//! had changes; `unknown` outside a git checkout) and, for crates that link libtorch, the
//! libtorch version they were built against (`CLS_LIBTORCH_VERSION`).

/// Emit `cargo:rustc-env=CLS_GIT_COMMIT=...`.
pub fn git_commit() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in [".git/HEAD", ".git/index"] {
        if root.join(f).exists() {
            println!("cargo:rerun-if-changed={}", root.join(f).display());
        }
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=CLS_GIT_COMMIT={commit}");
}

/// Emit `cargo:rustc-env=CLS_LIBTORCH_VERSION=...` from the `version.py` of the libtorch folder
/// that torch-sys linked (a PyTorch wheel's `torch/`), else from `build-version` (a libtorch zip).
pub fn libtorch_version() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let version = std::env::var("DEP_TCH_LIBTORCH_LIB").ok().and_then(|lib| {
        let root = std::path::Path::new(&lib).parent()?.to_path_buf();
        if let Ok(py) = std::fs::read_to_string(root.join("version.py")) {
            let line = py.lines().find(|l| l.starts_with("__version__"))?;
            return Some(line.split(['\'', '"']).nth(1)?.to_string());
        }
        std::fs::read_to_string(root.join("build-version")).ok().map(|v| v.trim().to_string())
    });
    println!("cargo:rustc-env=CLS_LIBTORCH_VERSION={}", version.unwrap_or_else(|| "unknown".to_string()));
}
