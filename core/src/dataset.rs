//! A loaded dataset: a label space, one sample per image (or feature row), and ground-truth
//! targets. Every reader in [`crate::readers`] returns one of these.

use crate::labels::{LabelSpace, Targets};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One image of a dataset: its absolute (or manifest-resolved) path and a stable id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Identifier as written in the source (relative path, COCO file name, VOC image id).
    pub id: String,
    /// Path of the image file; empty for feature-table rows.
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// A short name (used in cache keys and ONNX metadata), e.g. "corel5k-train".
    pub name: String,
    pub classes: LabelSpace,
    pub samples: Vec<Sample>,
    /// Ground truth, samples × classes, `LabelState as i8`.
    pub targets: Targets,
    /// Feature rows for CSV feature tables (samples × features); `None` for image datasets.
    pub features: Option<Array2<f32>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The subset of rows `idx`, in that order.
    pub fn subset(&self, idx: &[usize], name: &str) -> Dataset {
        Dataset {
            name: name.to_string(),
            classes: self.classes.clone(),
            samples: idx.iter().map(|&i| self.samples[i].clone()).collect(),
            targets: self.targets.select(ndarray::Axis(0), idx),
            features: self.features.as_ref().map(|f| f.select(ndarray::Axis(0), idx)),
        }
    }
}
