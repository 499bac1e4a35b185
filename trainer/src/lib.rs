//! `cls-train`'s library: the methods (one file each under `methods/`), the data path (readers →
//! image cache → batches), the loop, checkpoints, plots and the export at the end of a run.

pub mod bench;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod inputs;
pub mod launch;
pub mod loader;
pub mod lr;
pub mod methods;
pub mod optim;
pub mod peer;
pub mod plots;
pub mod progress;
pub mod report;
pub mod rundir;
pub mod runlog;
pub mod setup;
pub mod summary;
pub mod sweep;
pub mod thresholds;
pub mod train;
