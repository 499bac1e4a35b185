//! Tests of trainer/src/methods against independent f64 references written with plain loops
//! (method.md "One CLS step", "Schedules", "Ablations", "Baselines"). One file per topic under
//! `tests/methods/`.

#[path = "methods/common.rs"]
mod common;

#[path = "methods/baselines.rs"]
mod baselines;
#[path = "methods/cls.rs"]
mod cls;
#[path = "methods/observed_negatives.rs"]
mod observed_negatives;
#[path = "methods/registry.rs"]
mod registry;
#[path = "methods/role.rs"]
mod role;
#[path = "methods/sample_selection.rs"]
mod sample_selection;
#[path = "methods/selection.rs"]
mod selection;
