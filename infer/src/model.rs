//! What cls-infer needs to know about a model: its class names, input size, normalisation and
//! default threshold (from the ONNX metadata that `cls-train` exports: `classes`, `height`,
//! `width`, `mean`, `std`, `threshold`), and the names and shapes of its input and output.
//! `--classes FILE` and `--size HxW` stand in for (and override) the metadata.

use anyhow::{bail, Context, Result};
use ort::session::Session;
use std::path::Path;

/// ImageNet normalisation, used when a model names no `mean`/`std`.
pub use cls_core::preprocess::{IMAGENET_MEAN, IMAGENET_STD};

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub classes: Vec<String>,
    pub height: u32,
    pub width: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The model's suggested decision threshold, if it has one.
    pub threshold: Option<f64>,
    /// Notes for stderr (defaults that were assumed).
    pub notes: Vec<String>,
}

/// Parse `--size HxW`, for example `224x224`.
pub fn parse_size(text: &str) -> Result<(u32, u32)> {
    let (h, w) = text.split_once(['x', 'X']).with_context(|| format!("--size {text:?}: expected HxW, for example 224x224"))?;
    let dim = |s: &str| -> Result<u32> {
        match s.trim().parse::<u32>() {
            Ok(v) if (1..=16384).contains(&v) => Ok(v),
            _ => bail!("--size {text:?}: {s:?} is not a size between 1 and 16384"),
        }
    };
    Ok((dim(h)?, dim(w)?))
}

/// Read a class list: one name a line, blank lines ignored, no duplicates.
pub fn read_classes(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--classes {}", path.display()))?;
    let mut names: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() {
            continue;
        }
        if names.iter().any(|n| n == name) {
            bail!("{}:{}: class {name:?} is listed twice", path.display(), i + 1);
        }
        names.push(name.to_string());
    }
    if names.is_empty() {
        bail!("--classes {}: no class names in the file", path.display());
    }
    Ok(names)
}

fn json_floats3(key: &str, text: &str) -> Result<[f32; 3]> {
    let v: Vec<f32> = serde_json::from_str(text).with_context(|| format!("model metadata {key:?} = {text:?} is not a JSON array of numbers"))?;
    <[f32; 3]>::try_from(v.as_slice()).map_err(|_| anyhow::anyhow!("model metadata {key:?} has {} values; expected 3 (R, G, B)", v.len()))
}

/// Assemble the model description from a metadata lookup and the command-line overrides.
pub fn describe(meta: impl Fn(&str) -> Option<String>, classes: Option<Vec<String>>, size: Option<(u32, u32)>) -> Result<ModelInfo> {
    let mut notes = Vec::new();
    let classes = match (classes, meta("classes")) {
        (Some(c), _) => c,
        (None, Some(text)) => {
            let c: Vec<String> = serde_json::from_str(&text).context("model metadata \"classes\" is not a JSON array of strings")?;
            if c.is_empty() {
                bail!("model metadata \"classes\" is empty");
            }
            c
        }
        (None, None) => bail!(
            "the model has no \"classes\" metadata (was it exported by cls-train?); pass --classes FILE (one name a line) and --size HxW"
        ),
    };
    let (height, width) = match size {
        Some(s) => s,
        None => {
            let dim = |key: &str| -> Result<u32> {
                let text = meta(key).with_context(|| {
                    format!("the model has no {key:?} metadata (was it exported by cls-train?); pass --size HxW")
                })?;
                text.trim().parse::<u32>().ok().filter(|v| *v > 0).with_context(|| format!("model metadata {key:?} = {text:?} is not a positive integer"))
            };
            (dim("height")?, dim("width")?)
        }
    };
    let mut norm = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
        match meta(key) {
            Some(text) => json_floats3(key, &text),
            None => {
                notes.push(format!("the model has no {key:?} metadata; using ImageNet's {default:?}"));
                Ok(default)
            }
        }
    };
    let mean = norm("mean", IMAGENET_MEAN)?;
    let std = norm("std", IMAGENET_STD)?;
    if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("model metadata \"std\" = {std:?} must be positive");
    }
    let threshold = match meta("threshold") {
        Some(text) => Some(text.trim().parse::<f64>().ok().filter(|t| t.is_finite()).with_context(|| format!("model metadata \"threshold\" = {text:?} is not a number"))?),
        None => None,
    };
    Ok(ModelInfo { classes, height, width, mean, std, threshold, notes })
}

/// The input and output the pipeline feeds and reads, checked against the model description.
#[derive(Debug, Clone)]
pub struct Io {
    pub input: String,
    pub output: String,
    /// The input's batch dimension when the graph fixes it.
    pub fixed_batch: Option<usize>,
}

/// Pick the input (`images`, or the only one) and output (`probs`, or the first), and check
/// their shapes against `info` where the graph fixes them.
pub fn io(session: &Session, info: &ModelInfo) -> Result<Io> {
    let inputs = session.inputs();
    let input = match inputs.iter().find(|i| i.name() == "images") {
        Some(i) => i,
        None if inputs.len() == 1 => &inputs[0],
        None => bail!("the model has {} inputs and none is named \"images\"", inputs.len()),
    };
    let output = match session.outputs().iter().find(|o| o.name() == "probs").or(session.outputs().first()) {
        Some(o) => o,
        None => bail!("the model has no outputs"),
    };
    let shape = input.dtype().tensor_shape().with_context(|| format!("the model's input {:?} is not a tensor", input.name()))?;
    let expect = [None, Some(3), Some(info.height as i64), Some(info.width as i64)];
    if shape.len() != 4 {
        bail!("the model's input {:?} has {} dimensions; expected 4 (N, 3, H, W)", input.name(), shape.len());
    }
    for (axis, (&got, want)) in shape.iter().zip(expect).enumerate() {
        if let Some(want) = want {
            if got > 0 && got != want {
                bail!("the model's input {:?} has size {got} on axis {axis}, but {want} was expected (N, 3, H, W = {}x{})", input.name(), info.height, info.width);
            }
        }
    }
    if let Some(oshape) = output.dtype().tensor_shape() {
        if let Some(&c) = oshape.last() {
            if c > 0 && c as usize != info.classes.len() {
                bail!("the model's output {:?} has {c} classes, but {} class names were given", output.name(), info.classes.len());
            }
        }
    }
    let fixed_batch = (shape[0] > 0).then_some(shape[0] as usize);
    Ok(Io { input: input.name().to_string(), output: output.name().to_string(), fixed_batch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn meta(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("224x192").unwrap(), (224, 192));
        assert_eq!(parse_size("32X32").unwrap(), (32, 32));
        for bad in ["224", "0x3", "ax3", "3x", "99999x1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_metadata_and_overrides() {
        let m = meta(&[("classes", r#"["a","b"]"#), ("height", "8"), ("width", "6"), ("mean", "[0,0,0]"), ("std", "[1,1,1]"), ("threshold", "0.3")]);
        let info = describe(&m, None, None).unwrap();
        assert_eq!(info.classes, ["a", "b"]);
        assert_eq!((info.height, info.width, info.threshold), (8, 6, Some(0.3)));
        assert_eq!((info.mean, info.std), ([0.0; 3], [1.0; 3]));
        assert!(info.notes.is_empty());
        let over = describe(&m, Some(vec!["x".into()]), Some((4, 4))).unwrap();
        assert_eq!((over.classes.as_slice(), over.height), (&["x".to_string()][..], 4));
    }

    #[test]
    fn missing_metadata_is_a_clear_error() {
        let err = describe(meta(&[]), None, None).unwrap_err().to_string();
        assert!(err.contains("--classes"), "{err}");
        let err = describe(meta(&[]), Some(vec!["a".into()]), None).unwrap_err().to_string();
        assert!(err.contains("--size"), "{err}");
        let info = describe(meta(&[]), Some(vec!["a".into()]), Some((2, 2))).unwrap();
        assert_eq!((info.mean, info.std), (IMAGENET_MEAN, IMAGENET_STD));
        assert_eq!(info.notes.len(), 2);
        assert!(describe(meta(&[("classes", "[1]")]), None, Some((2, 2))).is_err());
        assert!(describe(meta(&[("mean", "[1,2]")]), Some(vec!["a".into()]), Some((2, 2))).is_err());
    }

    #[test]
    fn class_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, "cat\n\n dog \n").unwrap();
        assert_eq!(read_classes(&p).unwrap(), ["cat", "dog"]);
        std::fs::write(&p, "cat\ncat\n").unwrap();
        assert!(read_classes(&p).unwrap_err().to_string().contains(":2:"));
        assert!(read_classes(&dir.path().join("none")).is_err());
    }
}
