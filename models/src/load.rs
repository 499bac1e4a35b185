//! Loading a PyTorch state dict (converted to safetensors by `scripts/convert-torchvision` or
//! `scripts/convert-efficientnet-lite0`) into a `VarStore` by name.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use tch::nn::VarStore;
use tch::Tensor;

/// What [`load_pretrained`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Backbone parameters and buffers copied from the file.
    pub loaded: usize,
    /// Classifier tensors copied from the file.
    pub classifier_loaded: usize,
    /// Classifier tensors left at their initial values (not asked for, absent, or another shape),
    /// with the reason.
    pub classifier_skipped: Vec<String>,
    /// Keys of the file that the model has no use for (`num_batches_tracked`, a classifier of
    /// another shape, …).
    pub unused: Vec<String>,
}

/// The backbone does not match the file.
#[derive(Debug, thiserror::Error)]
#[error(
    "{file}: {} of the model's backbone tensors are missing from the file and {} have another shape\n  missing: {}\n  mismatched: {}",
    missing.len(), mismatched.len(), list(missing), list(mismatched)
)]
pub struct IncompatibleWeights {
    pub file: String,
    /// Variable names of the model that the file lacks.
    pub missing: Vec<String>,
    /// `name: model [..] vs file [..]`.
    pub mismatched: Vec<String>,
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

/// Whether a variable belongs to the classifier: its module (the name's second-to-last
/// component) is `fc` or `_fc` (see [`crate::Net::classifier_prefix`]).
fn is_classifier(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    parts.next();
    matches!(parts.next(), Some("fc") | Some("_fc"))
}

/// Finds the file's key for a variable: the variable's own name, or, for a network built under a
/// sub-path of the `VarStore` (`peer0.conv1.weight`), that name without its leading components.
fn find_key<'a>(name: &'a str, file: &HashMap<String, Tensor>) -> Option<&'a str> {
    let mut rest = name;
    loop {
        if file.contains_key(rest) {
            return Some(rest);
        }
        rest = rest.split_once('.')?.1;
    }
}

/// Loads a safetensors state dict into `vs`, matching names as the PyTorch checkpoint has them.
///
/// Every backbone parameter and buffer (batch norm's running mean and variance) of the model must
/// be in the file with the same shape, else the error ([`IncompatibleWeights`]) lists the missing
/// and mismatched names and nothing is changed. The classifier (`fc`/`_fc`) is loaded only when
/// `load_classifier` is set and the shapes match; otherwise it keeps its initial values. Keys of
/// the file that the model does not use are ignored and reported.
pub fn load_pretrained(vs: &mut VarStore, file: &Path, load_classifier: bool) -> Result<LoadReport> {
    let tensors = Tensor::read_safetensors(file).with_context(|| format!("reading safetensors {}", file.display()))?;
    let tensors: HashMap<String, Tensor> = tensors.into_iter().collect();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));

    let mut report = LoadReport::default();
    let mut used = std::collections::HashSet::new();
    let mut copies = Vec::new();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, var) in &vars {
        let key = find_key(name, &tensors);
        let classifier = is_classifier(name);
        match key {
            None if classifier => report.classifier_skipped.push(format!("{name}: not in the file")),
            None => missing.push(name.clone()),
            Some(key) => {
                let src = &tensors[key];
                let same_shape = src.size() == var.size();
                if classifier {
                    if !load_classifier {
                        report.classifier_skipped.push(format!("{name}: not requested"));
                    } else if !same_shape {
                        report.classifier_skipped.push(format!(
                            "{name}: model {:?} vs file {:?}",
                            var.size(),
                            src.size()
                        ));
                    } else {
                        used.insert(key.to_string());
                        copies.push((var, src, true));
                    }
                } else if same_shape {
                    used.insert(key.to_string());
                    copies.push((var, src, false));
                } else {
                    mismatched.push(format!("{name}: model {:?} vs file {:?}", var.size(), src.size()));
                }
            }
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() {
        return Err(IncompatibleWeights { file: file.display().to_string(), missing, mismatched }.into());
    }
    tch::no_grad(|| -> Result<()> {
        for (var, src, classifier) in copies {
            let src = src.to_kind(var.kind()).to_device(var.device());
            var.shallow_clone()
                .f_copy_(&src)
                .with_context(|| format!("copying into the model from {}", file.display()))?;
            if classifier {
                report.classifier_loaded += 1;
            } else {
                report.loaded += 1;
            }
        }
        Ok(())
    })?;
    report.unused = tensors.keys().filter(|k| !used.contains(*k)).cloned().collect();
    report.unused.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_names() {
        assert!(is_classifier("fc.weight"));
        assert!(is_classifier("peer1._fc.bias"));
        assert!(!is_classifier("layer1.0.conv1.weight"));
        assert!(!is_classifier("fc"));
        assert!(!is_classifier("fcx.weight"));
    }
}
