//! ONNX Runtime: finding `libonnxruntime`, creating the environment, and building a session on
//! the requested device.
//!
//! The library is searched in this order, and the first candidate that exists is loaded:
//! 1. `--ort-lib PATH`;
//! 2. `ORT_DYLIB_PATH`;
//! 3. the project's `.venv/onnxruntime/` (made by `scripts/setup`) next to the executable
//!    (`<exe>/../../.venv/onnxruntime`, i.e. from `target/release/`), then in the current folder;
//!    for each `.venv`, the wheel's `lib/python3*/site-packages/onnxruntime/capi/` as well;
//! 4. the system loader (`libonnxruntime.so` on the library path).
//!
//! An explicitly given path (1 or 2) that fails to load is an error; nothing else is tried.

use anyhow::{anyhow, bail, Result};
use ort::ep::{ExecutionProvider, CUDA};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use std::path::{Path, PathBuf};

/// The execution device asked for on the command line: `auto`, `cpu`, `cuda` or `cuda:N` (the
/// spelling of cls-train's `--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// CUDA (device 0) when this ONNX Runtime has it and it starts, the CPU otherwise.
    Auto,
    /// CUDA device N (0 for `cuda`), or fail.
    Cuda(i32),
    /// The CPU only.
    Cpu,
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(format!("{s:?}: expected auto, cpu, cuda or cuda:N (N a device number)")),
            },
        }
    }
}

/// The library file in `dir`: `libonnxruntime.so` if present, else the highest-versioned
/// `libonnxruntime.so.X.Y.Z` (the providers' libraries are never chosen).
pub fn library_in_dir(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("libonnxruntime.so.")?;
            let parts: Option<Vec<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
            Some((parts?, e.path()))
        })
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, p)| p)
}

/// The folders of a `.venv` where the library may be: the setup script's link, then the wheel.
fn venv_dirs(venv: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![venv.join("onnxruntime")];
    if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("site-packages/onnxruntime/capi"))
            .collect();
        pythons.sort();
        dirs.extend(pythons);
    }
    dirs
}

/// Where the library comes from: an explicit path (must load) or the first discovered one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryChoice {
    Explicit(PathBuf, &'static str),
    Found(PathBuf),
    /// Nothing found: ask the system loader for this name.
    System(&'static str),
}

/// Decide which library to load (pure apart from looking at the file system).
pub fn choose_library(flag: Option<&Path>, env: Option<&str>, exe: Option<&Path>, cwd: Option<&Path>) -> LibraryChoice {
    if let Some(p) = flag {
        return LibraryChoice::Explicit(p.to_path_buf(), "--ort-lib");
    }
    if let Some(p) = env.filter(|s| !s.is_empty()) {
        return LibraryChoice::Explicit(PathBuf::from(p), "ORT_DYLIB_PATH");
    }
    let mut venvs = Vec::new();
    if let Some(dir) = exe.and_then(|e| e.parent()).and_then(|d| d.parent()).and_then(|d| d.parent()) {
        venvs.push(dir.join(".venv"));
    }
    if let Some(cwd) = cwd {
        venvs.push(cwd.join(".venv"));
    }
    for venv in venvs {
        for dir in venv_dirs(&venv) {
            if let Some(lib) = library_in_dir(&dir) {
                return LibraryChoice::Found(lib);
            }
        }
    }
    LibraryChoice::System("libonnxruntime.so")
}

/// Fail early, before any work, when the library was named (`--ort-lib`, `ORT_DYLIB_PATH`) but
/// is not a file; whether it loads is found out while the first images decode.
pub fn check_library(flag: Option<&Path>) -> Result<()> {
    let env = std::env::var("ORT_DYLIB_PATH").ok();
    if let LibraryChoice::Explicit(path, source) = choose_library(flag, env.as_deref(), None, None) {
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => bail!("{source} {}: not a file (the ONNX Runtime library, libonnxruntime.so)", path.display()),
            Err(e) => bail!("{source} {}: {e} (the ONNX Runtime library, libonnxruntime.so)", path.display()),
        }
    }
    Ok(())
}

/// Load ONNX Runtime and create the process's environment. Returns the library path used.
pub fn init(flag: Option<&Path>) -> Result<(ort::environment::Environment, String)> {
    let env = std::env::var("ORT_DYLIB_PATH").ok();
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    let choice = choose_library(flag, env.as_deref(), exe.as_deref(), cwd.as_deref());
    let (path, hint) = match &choice {
        LibraryChoice::Explicit(p, source) => (p.clone(), format!(" (from {source})")),
        LibraryChoice::Found(p) => (p.clone(), String::new()),
        LibraryChoice::System(name) => (
            PathBuf::from(name),
            " (no .venv/onnxruntime found; run scripts/setup, or pass --ort-lib PATH or set ORT_DYLIB_PATH)"
                .to_string(),
        ),
    };
    let builder = ort::init_from(&path).map_err(|e| anyhow!("cannot load ONNX Runtime{hint}: {e}"))?;
    let environment = builder
        .with_name("cls-infer")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow!("cannot create the ONNX Runtime environment: {e}"))?;
    Ok((environment, path.display().to_string()))
}

/// Build a session for `model` with `threads` intra-op threads on `device`. Returns the session
/// and the name of the execution provider that runs it.
pub fn session(
    env: &ort::environment::Environment,
    model: &Path,
    device: Device,
    threads: usize,
) -> Result<(Session, &'static str)> {
    let ort_err = |what: &str| {
        let what = what.to_string();
        move |e: ort::Error<ort::session::builder::SessionBuilder>| anyhow!("{what}: {e}")
    };
    let mut builder = Session::builder(env)
        .map_err(|e| anyhow!("cannot create an ONNX Runtime session builder: {e}"))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(ort_err("setting the optimisation level"))?
        .with_intra_threads(threads)
        .map_err(ort_err("setting the thread count"))?
        // Idle ONNX Runtime threads would otherwise spin and steal the cores the decoders need.
        .with_intra_op_spinning(false)
        .map_err(ort_err("disabling thread spinning"))?;
    let mut provider = "CPUExecutionProvider";
    if device != Device::Cpu {
        let available = CUDA::is_available().unwrap_or(false);
        let id = match device {
            Device::Cuda(n) => n,
            _ => 0,
        };
        let attempt = if available {
            match builder.with_execution_providers([CUDA::default().with_device_id(id).build().error_on_failure()]) {
                Ok(b) => {
                    builder = b;
                    Ok(())
                }
                Err(e) => {
                    let reason = e.message().to_string();
                    builder = e.recover();
                    Err(reason)
                }
            }
        } else {
            Err("this ONNX Runtime build has no CUDA execution provider (install the onnxruntime-gpu libraries)"
                .to_string())
        };
        match (attempt, device) {
            (Ok(()), _) => provider = "CUDAExecutionProvider",
            (Err(reason), Device::Cuda(n)) => bail!("--device cuda:{n}: CUDA is not usable: {reason}"),
            (Err(reason), _) => tracing::info!("CUDA not used ({reason})"),
        }
    }
    let session =
        builder.commit_from_file(model).map_err(|e| anyhow!("cannot load the model {}: {e}", model.display()))?;
    Ok((session, provider))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn devices() {
        assert_eq!("auto".parse(), Ok(Device::Auto));
        assert_eq!("CPU".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1:2"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn picks_plain_then_highest_version() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(library_in_dir(dir.path()), None);
        for name in ["libonnxruntime.so.1.9.0", "libonnxruntime.so.1.31.1", "libonnxruntime_providers_shared.so"] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(library_in_dir(dir.path()), Some(dir.path().join("libonnxruntime.so.1.31.1")));
        fs::write(dir.path().join("libonnxruntime.so"), b"").unwrap();
        assert_eq!(library_in_dir(dir.path()), Some(dir.path().join("libonnxruntime.so")));
    }

    #[test]
    fn lookup_order() {
        let root = tempfile::tempdir().unwrap();
        let exe = root.path().join("proj/target/release/cls-infer");
        let venv_lib = root.path().join("proj/.venv/onnxruntime");
        fs::create_dir_all(&venv_lib).unwrap();
        let flag = Path::new("/x/libonnxruntime.so");
        assert_eq!(
            choose_library(Some(flag), Some("/y"), Some(&exe), None),
            LibraryChoice::Explicit(flag.into(), "--ort-lib")
        );
        assert_eq!(
            choose_library(None, Some("/y"), Some(&exe), None),
            LibraryChoice::Explicit("/y".into(), "ORT_DYLIB_PATH")
        );
        // An empty .venv/onnxruntime is skipped; then the system loader.
        assert_eq!(choose_library(None, Some(""), Some(&exe), None), LibraryChoice::System("libonnxruntime.so"));
        // The wheel inside the venv is found when the setup link is missing.
        let wheel = root.path().join("proj/.venv/lib/python3.11/site-packages/onnxruntime/capi");
        fs::create_dir_all(&wheel).unwrap();
        fs::write(wheel.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(
            choose_library(None, None, Some(&exe), None),
            LibraryChoice::Found(wheel.join("libonnxruntime.so.1.31.1"))
        );
        // The setup link wins over the wheel; the executable's project wins over the current folder.
        fs::write(venv_lib.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        let cwd = root.path().join("elsewhere");
        fs::create_dir_all(cwd.join(".venv/onnxruntime")).unwrap();
        fs::write(cwd.join(".venv/onnxruntime/libonnxruntime.so"), b"").unwrap();
        assert_eq!(
            choose_library(None, None, Some(&exe), Some(&cwd)),
            LibraryChoice::Found(venv_lib.join("libonnxruntime.so.1.31.1"))
        );
        assert_eq!(
            choose_library(None, None, None, Some(&cwd)),
            LibraryChoice::Found(cwd.join(".venv/onnxruntime/libonnxruntime.so"))
        );
    }
}
