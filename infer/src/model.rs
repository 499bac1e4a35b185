//! What cls-infer needs to know about a model: its class names, input size, normalisation and
//! decision thresholds (from the ONNX metadata that `cls-train` exports: `classes`, `height`,
//! `width`, `mean`, `std`, `threshold` (the global one), `thresholds` (a JSON array, one per
//! class, in class order)), and the names and shapes of its input and output.
//! `--classes FILE` and `--size HxW` stand in for (and override) the metadata.

use anyhow::{bail, Context, Result};
use cls_onnx::proto::{tensor_shape_proto::dimension, type_proto, StringStringEntryProto, ValueInfoProto};
use ort::session::Session;
use std::collections::HashMap;
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
    /// The model's per-class thresholds (one per class, each in [0, 1]), if it has them.
    pub thresholds: Option<Vec<f64>>,
    /// Notes for stderr (defaults that were assumed).
    pub notes: Vec<String>,
}

/// The largest input height or width accepted (from `--size` or the metadata).
pub const MAX_SIDE: u32 = 8192;

/// Parse `--size HxW`, for example `224x224`.
pub fn parse_size(text: &str) -> Result<(u32, u32)> {
    let (h, w) = cls_core::preprocess::parse_size(text, MAX_SIDE).context("--size")?;
    check_tensor(h, w).with_context(|| format!("--size {text:?}"))?;
    Ok((h, w))
}

/// One image's input tensor must fit in a batch (`pipeline::MAX_BATCH_BYTES`).
fn check_tensor(h: u32, w: u32) -> Result<()> {
    let bytes = 3 * 4 * h as u64 * w as u64;
    let max = crate::pipeline::MAX_BATCH_BYTES as u64;
    if bytes > max {
        bail!(
            "an input of {h}x{w} takes {} MiB an image, more than the {} MiB a batch may take",
            bytes >> 20,
            max >> 20
        );
    }
    Ok(())
}

/// Read a class list: one name a line, blank lines ignored, no duplicates. A byte-order mark
/// (as some editors write) is not part of the first name.
pub fn read_classes(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--classes {}", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
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
    let v: Vec<f32> = serde_json::from_str(text)
        .with_context(|| format!("model metadata {key:?} = {text:?} is not a JSON array of numbers"))?;
    <[f32; 3]>::try_from(v.as_slice())
        .map_err(|_| anyhow::anyhow!("model metadata {key:?} has {} values; expected 3 (R, G, B)", v.len()))
}

/// What cls-infer reads from an ONNX file before ONNX Runtime has loaded it: the metadata and
/// the input's batch dimension, so that images can be decoding while ONNX Runtime builds its
/// session (a tenth to a few tenths of a second for EfficientNet-Lite0 on 2 cores, 4-5% of
/// tagging a folder of 500 images).
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub metadata: HashMap<String, String>,
    /// The batch dimension of the input (`images`, or the only one that is not an
    /// initializer) when the graph fixes it.
    pub fixed_batch: Option<usize>,
    /// The last dimension (the class count) of the output (`probs`, or the first) when the graph
    /// fixes it.
    pub output_width: Option<usize>,
}

/// `ModelProto` with only the fields of [`Head`]: prost skips the others (the weights among
/// them) without copying, so reading a 15 MB model's head costs about as much as reading the file.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelHead {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphHead>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntryProto>,
}

/// `GraphProto`'s initializer names, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
struct GraphHead {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorName>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

/// Dimension `axis` (from the end when `from_end`) of a tensor value when the graph fixes it.
fn fixed_dim(v: &ValueInfoProto, axis: usize, from_end: bool) -> Option<usize> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else { return None };
    let dims = &t.shape.as_ref()?.dim;
    let d = if from_end { dims.iter().rev().nth(axis)? } else { dims.get(axis)? };
    match d.value {
        Some(dimension::Value::DimValue(n)) if n > 0 => usize::try_from(n).ok(),
        _ => None,
    }
}

/// `TensorProto`'s name alone.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorName {
    #[prost(string, optional, tag = "8")]
    name: Option<String>,
}

/// Read the [`Head`] of the ONNX file at `path`.
pub fn read_head(path: &Path) -> Result<Head> {
    // Mapped, not read: the weights (nearly all of the file) are skipped without being copied or
    // even paged in.
    let file = std::fs::File::open(path).with_context(|| format!("--model {}", path.display()))?;
    // SAFETY: the map is read once, here, and dropped before returning; a file truncated by
    // another process meanwhile could fault, as with any reader of a file that changes under it.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("--model {}", path.display()))?;
    if bytes.is_empty() {
        bail!("--model {}: the file is empty", path.display());
    }
    head_of(&bytes).with_context(|| format!("--model {}: not an ONNX model", path.display()))
}

fn head_of(bytes: &[u8]) -> Result<Head> {
    let m = <ModelHead as prost::Message>::decode(bytes)?;
    let metadata = m.metadata_props.into_iter().filter_map(|e| Some((e.key?, e.value.unwrap_or_default()))).collect();
    let Some(g) = m.graph else { return Ok(Head { metadata, fixed_batch: None, output_width: None }) };
    let weights: Vec<&String> = g.initializer.iter().filter_map(|t| t.name.as_ref()).collect();
    let inputs: Vec<&ValueInfoProto> =
        g.input.iter().filter(|i| !weights.iter().any(|w| Some(*w) == i.name.as_ref())).collect();
    let input = inputs.iter().find(|i| i.name.as_deref() == Some("images")).or(if inputs.len() == 1 {
        inputs.first()
    } else {
        None
    });
    let fixed_batch = input.and_then(|i| fixed_dim(i, 0, false));
    let output = g.output.iter().find(|o| o.name.as_deref() == Some("probs")).or(g.output.first());
    let output_width = output.and_then(|o| fixed_dim(o, 0, true));
    Ok(Head { metadata, fixed_batch, output_width })
}

/// Assemble the model description from a metadata lookup and the command-line overrides.
pub fn describe(
    meta: impl Fn(&str) -> Option<String>,
    classes: Option<Vec<String>>,
    size: Option<(u32, u32)>,
) -> Result<ModelInfo> {
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
        // Bounded by `parse_size`.
        Some(s) => s,
        None => {
            let dim = |key: &str| -> Result<u32> {
                let text = meta(key).with_context(|| {
                    format!("the model has no {key:?} metadata (was it exported by cls-train?); pass --size HxW")
                })?;
                text.trim().parse::<u32>().ok().filter(|v| (1..=MAX_SIDE).contains(v)).with_context(|| {
                    format!("model metadata {key:?} = {text:?} is not a size between 1 and {MAX_SIDE}")
                })
            };
            let (h, w) = (dim("height")?, dim("width")?);
            check_tensor(h, w).context("model metadata \"height\" and \"width\"")?;
            (h, w)
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
        Some(text) => Some(
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite())
                .with_context(|| format!("model metadata \"threshold\" = {text:?} is not a number"))?,
        ),
        None => None,
    };
    let thresholds = meta("thresholds").map(|text| per_class_thresholds(&text, classes.len())).transpose()?;
    Ok(ModelInfo { classes, height, width, mean, std, threshold, thresholds, notes })
}

/// The `thresholds` metadata: a JSON array of `n_classes` numbers, each finite and in [0, 1].
fn per_class_thresholds(text: &str, n_classes: usize) -> Result<Vec<f64>> {
    let values: Vec<f64> = serde_json::from_str(text).with_context(|| {
        format!("model metadata \"thresholds\" = {:?} is not a JSON array of numbers", preview(text))
    })?;
    if values.len() != n_classes {
        bail!(
            "model metadata \"thresholds\" has {} values for {n_classes} classes (one per class, in class order)",
            values.len()
        );
    }
    if let Some((c, t)) = values.iter().enumerate().find(|(_, t)| !(t.is_finite() && (0.0..=1.0).contains(*t))) {
        bail!("model metadata \"thresholds\": the threshold of class {c} is {t}, not a number in [0, 1]");
    }
    Ok(values)
}

/// At most 80 characters of `text`, for messages.
fn preview(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
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
    let shape = input
        .dtype()
        .tensor_shape()
        .with_context(|| format!("the model's input {:?} is not a tensor", input.name()))?;
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
                bail!(
                    "the model's output {:?} has {c} classes, but {} class names were given",
                    output.name(),
                    info.classes.len()
                );
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
        assert_eq!(parse_size("8192x4096").unwrap(), (8192, 4096));
        // One parser for both binaries: a single number is a square.
        assert_eq!(parse_size("224").unwrap(), (224, 224));
        for bad in ["0x3", "ax3", "3x", "99999x1", "16384x16384", "8193x1", "8192x8192"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        // From the metadata too.
        let m = |h: &str| meta(&[("classes", r#"["a"]"#), ("height", h), ("width", "8192")]);
        assert!(describe(m("4096"), None, None).is_ok());
        for bad in ["100000", "8192", "0", "-1"] {
            let err = format!("{:#}", describe(m(bad), None, None).unwrap_err());
            assert!(err.contains("\"height\""), "{bad}: {err}");
        }
    }

    #[test]
    fn from_metadata_and_overrides() {
        let m = meta(&[
            ("classes", r#"["a","b"]"#),
            ("height", "8"),
            ("width", "6"),
            ("mean", "[0,0,0]"),
            ("std", "[1,1,1]"),
            ("threshold", "0.3"),
        ]);
        let info = describe(&m, None, None).unwrap();
        assert_eq!(info.classes, ["a", "b"]);
        assert_eq!((info.height, info.width, info.threshold), (8, 6, Some(0.3)));
        assert_eq!((info.mean, info.std), ([0.0; 3], [1.0; 3]));
        assert!(info.notes.is_empty());
        let over = describe(&m, Some(vec!["x".into()]), Some((4, 4))).unwrap();
        assert_eq!((over.classes.as_slice(), over.height), (&["x".to_string()][..], 4));
        assert_eq!(info.thresholds, None);
    }

    #[test]
    fn per_class_thresholds_from_metadata() {
        let m = |t: &str| meta(&[("classes", r#"["a","b"]"#), ("height", "8"), ("width", "8"), ("thresholds", t)]);
        assert_eq!(describe(m("[0.25, 1]"), None, None).unwrap().thresholds, Some(vec![0.25, 1.0]));
        for (bad, needle) in [
            ("[0.5]", "1 values for 2 classes"),
            ("[0.5, 0.5, 0.5]", "3 values for 2 classes"),
            ("[0.5, 1.5]", "class 1 is 1.5"),
            ("[-0.1, 0.5]", "class 0 is -0.1"),
            ("[0.5, null]", "not a JSON array of numbers"),
            ("{\"a\": 0.5}", "not a JSON array of numbers"),
        ] {
            let err = format!("{:#}", describe(m(bad), None, None).unwrap_err());
            assert!(err.contains(needle), "{bad}: {err}");
        }
        // --classes with another count than the metadata's thresholds.
        let err = format!("{:#}", describe(m("[0.5, 0.5]"), Some(vec!["x".into()]), None).unwrap_err());
        assert!(err.contains("2 values for 1 classes"), "{err}");
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
    fn head_of_a_model() {
        use cls_onnx::builder::{Dim, GraphBuilder};
        let build = |batch: Dim, extra_input: bool| {
            let mut g = GraphBuilder::new("t");
            g.input_f32("images", &[batch, Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)]);
            if extra_input {
                // An old-style graph lists its weights among the inputs too.
                g.initializer_f32("w", &[1], &[1.0]);
                g.input_f32("w", &[Dim::Fixed(1)]);
            }
            g.node("Identity", &["images"], &["probs"], &[]);
            g.output_f32("probs", &[Dim::Named("n".into()), Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)]);
            g.metadata("classes", r#"["a"]"#);
            g.to_bytes()
        };
        let h = head_of(&build(Dim::Named("n".into()), false)).unwrap();
        assert_eq!(h.metadata.get("classes").map(String::as_str), Some(r#"["a"]"#));
        assert_eq!(h.fixed_batch, None);
        assert_eq!(h.output_width, Some(4));
        assert_eq!(head_of(&build(Dim::Fixed(8), false)).unwrap().fixed_batch, Some(8));
        assert_eq!(head_of(&build(Dim::Fixed(8), true)).unwrap().fixed_batch, Some(8));
        assert!(head_of(b"not a model").is_err());
    }

    #[test]
    fn class_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, "cat\n\n dog \n").unwrap();
        assert_eq!(read_classes(&p).unwrap(), ["cat", "dog"]);
        std::fs::write(&p, "cat\ncat\n").unwrap();
        assert!(read_classes(&p).unwrap_err().to_string().contains(":2:"));
        // A byte-order mark is not part of the first name; Windows line ends are no part of any.
        std::fs::write(&p, "\u{feff}cat\r\ndog\r\n").unwrap();
        assert_eq!(read_classes(&p).unwrap(), ["cat", "dog"]);
        assert!(read_classes(&dir.path().join("none")).is_err());
    }
}
