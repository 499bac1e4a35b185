//! `cls-core`: everything CLS needs that does not touch a deep-learning runtime.
//!
//! Data flows one way: files → [`readers`] → [`Dataset`] (a [`LabelSpace`] and ground-truth
//! [`Targets`]) → [`protocol`] (hides training labels) → trainer; and scores → [`metrics`].
//! [`preprocess`] turns image files into normalised NCHW tensors for both trainer and infer.
//! [`synthetic`] writes the built-in demo dataset (coloured shapes, JSONL manifests).

pub mod calibrate;
pub mod dataset;
pub mod fsio;
pub mod html;
pub mod labels;
pub mod metrics;
pub mod preprocess;
pub mod protocol;
pub mod readers;
pub mod synthetic;

pub use dataset::{Dataset, Sample};
pub use labels::{LabelSpace, LabelState, Targets};
