//! Helpers shared by the integration tests: random weights, the repository's Python and ONNX
//! Runtime (loaded from the virtual environment), and running an exported model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use tch::nn::VarStore;
use tch::Tensor;

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("models/ has a parent").to_path_buf()
}

/// `.venv/bin/python` when it exists.
pub fn venv_python() -> Option<PathBuf> {
    let p = repo_root().join(".venv/bin/python");
    p.exists().then_some(p)
}

/// Gives every variable of `vs` random values that keep activations in a sane range and make
/// batch norm's running statistics matter: conv/linear weights keep their (fan-scaled) init,
/// batch-norm weights uniform in [0.5, 1.5], biases and running means N(0, 0.1²), running
/// variances uniform in [0.5, 1.5].
pub fn randomise(vs: &VarStore, seed: i64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            let mut t = t;
            if name.ends_with("running_var") {
                let _ = t.uniform_(0.5, 1.5);
            } else if name.ends_with("running_mean") || name.ends_with(".bias") {
                let r = Tensor::randn(t.size(), (t.kind(), t.device())) * 0.1;
                t.copy_(&r);
            } else if t.dim() == 1 {
                let _ = t.uniform_(0.5, 1.5);
            }
        }
    });
}

/// Rescales the classifier so that the logits of `x` have standard deviation about 1, so that
/// the probabilities compared between tch and ONNX Runtime are not saturated at 0 or 1.
pub fn calibrate_head(net: &cls_models::Net, vs: &VarStore, x: &Tensor) {
    let logits = tch::no_grad(|| net.forward_t(x, false));
    let std = logits.std(true).double_value(&[]);
    let name = format!("{}.weight", qualified(net, net.classifier_prefix()));
    let w = vs.variables().remove(&name).unwrap_or_else(|| panic!("no variable {name}"));
    tch::no_grad(|| {
        let mut w = w;
        let _ = w.g_mul_scalar_(1.0 / std.max(1e-6));
    });
}

fn qualified(net: &cls_models::Net, local: &str) -> String {
    if net.prefix().is_empty() {
        local.to_string()
    } else {
        format!("{}.{local}", net.prefix())
    }
}

static ORT_ENV: OnceLock<Option<ort::environment::Environment>> = OnceLock::new();

/// The ONNX Runtime environment, from `libonnxruntime.so*` in `.venv/onnxruntime` or the wheel's
/// `onnxruntime/capi`; `None` (with a notice) when the library is not installed.
pub fn ort_env() -> Option<&'static ort::environment::Environment> {
    ORT_ENV
        .get_or_init(|| {
            let lib = find_onnxruntime();
            let Some(lib) = lib else {
                eprintln!("NOTICE: libonnxruntime.so not found under .venv; ONNX Runtime checks skipped");
                return None;
            };
            let env = ort::init_from(&lib)
                .unwrap_or_else(|e| panic!("loading {}: {e}", lib.display()))
                .with_name("cls-models-tests")
                .build()
                .unwrap_or_else(|e| panic!("ONNX Runtime environment: {e}"));
            Some(env)
        })
        .as_ref()
}

fn find_onnxruntime() -> Option<PathBuf> {
    let root = repo_root().join(".venv");
    let mut dirs = vec![root.join("onnxruntime")];
    if let Ok(entries) = std::fs::read_dir(root.join("lib")) {
        for e in entries.flatten() {
            dirs.push(e.path().join("site-packages/onnxruntime/capi"));
        }
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut libs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
            .collect();
        libs.sort();
        if let Some(lib) = libs.pop() {
            return Some(lib);
        }
    }
    None
}

/// What [`run_onnx`] returns: the shape and values of `probs`, and the custom metadata.
pub type OnnxRun = (Vec<i64>, Vec<f32>, Vec<(String, String)>);

/// Runs the model at `path` on one input and returns the output `probs` (shape, values) and the
/// model's custom metadata.
pub fn run_onnx(env: &ort::environment::Environment, path: &Path, input: &str, x: &Tensor) -> Result<OnnxRun> {
    let mut session = ort::session::Session::builder(env)
        .map_err(|e| anyhow!("{e}"))?
        .with_intra_threads(2)
        .map_err(|e| anyhow!("{e}"))?
        .commit_from_file(path)
        .with_context(|| format!("loading {}", path.display()))?;
    let shape: Vec<i64> = x.size();
    let data = Vec::<f32>::try_from(&x.contiguous().view(-1))?;
    let value = ort::value::Tensor::from_array((shape, data))?;
    let outputs = session.run(ort::inputs![input => value])?;
    let (shape, values) = outputs["probs"].try_extract_tensor::<f32>()?;
    let shape = shape.to_vec();
    let values = values.to_vec();
    drop(outputs);
    let meta = session.metadata()?;
    let mut entries = Vec::new();
    for key in meta.custom_keys()? {
        let value = meta.custom(&key).unwrap_or_default();
        entries.push((key, value));
    }
    Ok((shape, values, entries))
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
