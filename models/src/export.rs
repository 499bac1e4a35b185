//! ONNX export of one network, or of the two peers of a co-training method averaged.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cls_onnx::builder::Dim;
use cls_onnx::GraphBuilder;
use tch::nn::VarStore;

use crate::graph::Emitter;
use crate::{efficientnet, mlp, resnet, Arch, Net};

/// What inference needs besides the weights, written as the model's `metadata_props`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportMeta {
    /// Class names in output order.
    pub classes: Vec<String>,
    /// Input height and width the network was trained at (images are squished to it).
    pub height: i64,
    pub width: i64,
    /// Per-channel normalisation `(x / 255 - mean) / std` that inference applies before the graph.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Decision threshold on probabilities: the global one when `thresholds` are given.
    pub threshold: f64,
    /// Per-class decision thresholds, one per class in output order (chosen on validation by
    /// the trainer); `None`: `threshold` for every class.
    pub thresholds: Option<Vec<f64>>,
    /// Stable identifiers of the classes in output order (Open Images MIDs such as
    /// `/m/01g317`), when the data has them.
    pub class_ids: Option<Vec<String>>,
    /// Further entries: method, backbone, dataset, partial, metrics JSON, config hash, …
    pub extra: Vec<(String, String)>,
}

/// Writes an ONNX model (opset 17) computing `probs = sigmoid(net(images))`.
///
/// The input is `images` `[N, 3, H, W]` f32 (for [`Arch::Mlp`]: `features` `[N, in_dim]`) with a
/// dynamic batch dimension `N`; the output is `probs` `[N, C]`. Weights are read from each
/// network's `VarStore` by name; batch norm runs in inference mode on its running statistics.
/// With two networks the graph computes both and outputs the mean of their probabilities (the
/// ensemble of the two peers). Metadata: `classes` (JSON array), `height`, `width`, `mean` and
/// `std` (JSON arrays), `threshold` (the global one), `thresholds` (JSON array, one per class, when
/// given), `class_ids` (JSON array, when given), `input` ("images" or "features"), `arch`, then
/// `extra` (an `extra` key that repeats one of these replaces it).
pub fn export_onnx(nets: &[(&Net, &VarStore)], arch: &Arch, meta: &ExportMeta, path: &Path) -> Result<()> {
    let bytes = onnx_bytes(nets, arch, meta)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    cls_core::fsio::write_atomic(path, &bytes).with_context(|| format!("writing ONNX model {}", path.display()))
}

/// The serialised model of [`export_onnx`].
pub fn onnx_bytes(nets: &[(&Net, &VarStore)], arch: &Arch, meta: &ExportMeta) -> Result<Vec<u8>> {
    if nets.is_empty() || nets.len() > 2 {
        bail!("export: expected one network or two peers, got {}", nets.len());
    }
    let num_classes = nets[0].0.num_classes();
    for (net, _) in nets {
        if net.arch() != arch {
            bail!("export: a network is {} but the export was asked for {}", net.arch(), arch);
        }
        if net.num_classes() != num_classes {
            bail!("export: the peers have {} and {} classes", num_classes, net.num_classes());
        }
    }
    if meta.classes.len() as i64 != num_classes {
        bail!("export: {} class names for a network with {} outputs", meta.classes.len(), num_classes);
    }
    let probability = |t: f64| t.is_finite() && (0.0..=1.0).contains(&t);
    if !probability(meta.threshold) {
        bail!("export: threshold {} is not a probability in [0, 1]", meta.threshold);
    }
    if let Some(t) = &meta.thresholds {
        if t.len() != meta.classes.len() {
            bail!("export: {} per-class thresholds for {} classes", t.len(), meta.classes.len());
        }
        if let Some((c, v)) = t.iter().enumerate().find(|(_, &v)| !probability(v)) {
            bail!("export: the threshold of class {:?} is {v}, not a probability in [0, 1]", meta.classes[c]);
        }
    }
    if let Some(ids) = &meta.class_ids {
        if ids.len() != meta.classes.len() {
            bail!("export: {} class ids for {} classes", ids.len(), meta.classes.len());
        }
    }

    let mut g = GraphBuilder::new(&format!("cls-{}", arch.name()));
    let n = || Dim::Named("N".to_string());
    let input = match arch {
        Arch::Mlp { in_dim, .. } => {
            g.input_f32("features", &[n(), Dim::Fixed(*in_dim)]);
            "features"
        }
        _ => {
            g.input_f32("images", &[n(), Dim::Fixed(3), Dim::Named("H".into()), Dim::Named("W".into())]);
            "images"
        }
    };
    let mut probs = Vec::new();
    for (i, (net, vs)) in nets.iter().enumerate() {
        let tag = if nets.len() == 1 { String::new() } else { format!("peer{i}.") };
        let mut e = Emitter::new(&mut g, vs, net.prefix(), &tag);
        let features = match arch {
            Arch::Mlp { hidden, .. } => mlp::emit_features(&mut e, *hidden, input)?,
            Arch::EfficientNetLite0 => efficientnet::emit_features(&mut e, input)?,
            _ => resnet::emit_features(&mut e, arch, input)?,
        };
        let logits = e.linear(&features, net.classifier_prefix())?;
        probs.push(g.op("Sigmoid", &[&logits], &[]));
    }
    if probs.len() == 1 {
        g.node("Identity", &[&probs[0]], &["probs"], &[]);
    } else {
        g.node("Mean", &[&probs[0], &probs[1]], &["probs"], &[]);
    }
    g.output_f32("probs", &[n(), Dim::Fixed(num_classes)]);

    let mut entries: Vec<(String, String)> = vec![
        ("classes".into(), serde_json::to_string(&meta.classes)?),
        ("height".into(), meta.height.to_string()),
        ("width".into(), meta.width.to_string()),
        ("mean".into(), serde_json::to_string(&meta.mean)?),
        ("std".into(), serde_json::to_string(&meta.std)?),
        ("threshold".into(), meta.threshold.to_string()),
    ];
    if let Some(t) = &meta.thresholds {
        entries.push(("thresholds".into(), serde_json::to_string(t)?));
    }
    if let Some(ids) = &meta.class_ids {
        entries.push(("class_ids".into(), serde_json::to_string(ids)?));
    }
    entries.extend([("input".into(), input.to_string()), ("arch".into(), arch.name())]);
    // ONNX requires unique keys: an `extra` entry replaces a standard one of the same key.
    for (k, v) in &meta.extra {
        match entries.iter_mut().find(|(key, _)| key == k) {
            Some(entry) => entry.1 = v.clone(),
            None => entries.push((k.clone(), v.clone())),
        }
    }
    for (k, v) in entries {
        g.metadata(&k, v);
    }
    Ok(g.to_bytes())
}
