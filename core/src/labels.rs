//! Label spaces (class names ↔ indices in a stable order) and multi-label targets with three
//! states per (image, class) entry.

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The state of one (image, class) entry.
///
/// Ground truth uses `Positive` and `Negative`, plus `Unknown` where a dataset says nothing
/// (VOC "difficult": left out of evaluation for that class). Observed training labels after a
/// partial-label protocol use `Positive` (observed positive), `Unknown` (unannotated: a true
/// negative or a missing positive, `y = 0` in method.md) and `Negative` only for explicitly
/// observed negatives (entry-wise protocol), which are always kept and never enter selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(i8)]
pub enum LabelState {
    Negative = -1,
    Unknown = 0,
    Positive = 1,
}

impl LabelState {
    pub fn from_i8(v: i8) -> Option<Self> {
        match v {
            -1 => Some(Self::Negative),
            0 => Some(Self::Unknown),
            1 => Some(Self::Positive),
            _ => None,
        }
    }
}

/// Targets are stored as an `i8` matrix (images × classes) holding `LabelState as i8`.
pub type Targets = Array2<i8>;

pub const POS: i8 = LabelState::Positive as i8;
pub const NEG: i8 = LabelState::Negative as i8;
pub const UNK: i8 = LabelState::Unknown as i8;

/// Class names and their indices, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSpace {
    names: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, usize>,
}

impl LabelSpace {
    /// Build from names in the order given. Duplicate names are an error.
    pub fn new(names: Vec<String>) -> Result<Self, String> {
        let mut index = HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            if index.insert(n.clone(), i).is_some() {
                return Err(format!("class '{n}' is listed twice"));
            }
        }
        Ok(LabelSpace { names, index })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        if self.index.len() != self.names.len() {
            // Deserialised without the index: fall back to a scan.
            return self.names.iter().position(|n| n == name);
        }
        self.index.get(name).copied()
    }
}
