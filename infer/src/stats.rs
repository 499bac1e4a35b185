//! `<out>.stats.json`: the record of one run (one shard of an array job), as img2dataset and
//! clip-retrieval keep one per shard: what was tagged, failed and skipped, how fast, with which
//! model (its SHA-256) and thresholds, and which shard. `--from-tags` reads them beside the tag
//! files to say which shards are missing.

use crate::shard::Shard;
use crate::thresholds::Decision;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// `OUT.stats.json`.
pub fn stats_path(out: &Path) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    // Bytes, not text: an --out name that is not UTF-8 keeps its own bytes.
    let bytes = out.as_os_str().as_bytes();
    let end = bytes.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let mut name = bytes[..end].to_vec();
    name.extend_from_slice(b".stats.json");
    PathBuf::from(std::ffi::OsString::from_vec(name))
}

/// The SHA-256 of a file, in hex.
pub fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardStats {
    pub index: usize,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThresholdStats {
    pub source: String,
    pub global: f64,
    /// Per class (by name, in class order), when classes have their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<serde_json::Map<String, serde_json::Value>>,
    pub min_labels: usize,
    pub top_k: Option<usize>,
}

impl ThresholdStats {
    pub fn of(d: &Decision, classes: &[String]) -> ThresholdStats {
        let per_class =
            (!d.uniform).then(|| classes.iter().cloned().zip(d.per_class.iter().map(|&t| t.into())).collect());
        ThresholdStats {
            source: d.source.clone(),
            global: d.global,
            per_class,
            min_labels: d.min_labels,
            top_k: d.top_k,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub images: String,
    pub out: String,
    pub format: String,
    pub shard: ShardStats,
    pub images_tagged: usize,
    pub images_failed: usize,
    /// Already in the output (`--resume`).
    pub images_skipped: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub model: String,
    pub model_sha256: String,
    pub thresholds: ThresholdStats,
    /// False when the run stopped early (`--max-errors`).
    pub complete: bool,
    pub cls_infer: String,
}

impl Stats {
    pub fn shard(s: Shard) -> ShardStats {
        ShardStats { index: s.index, count: s.count }
    }
}

/// The stats beside a tag file, if any.
pub fn read_beside(tags: &Path) -> Option<Stats> {
    let text = std::fs::read_to_string(stats_path(tags)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Which shards of an array job have no tag file among `stats` (each `Some` for a tag file with
/// stats): `(count, missing indices)`, when the stats agree on a shard count.
pub fn missing_shards(stats: &[Option<Stats>]) -> Option<(usize, Vec<usize>)> {
    let counts: std::collections::BTreeSet<usize> = stats.iter().flatten().map(|s| s.shard.count).collect();
    if counts.len() != 1 {
        return None;
    }
    let count = *counts.first()?;
    let seen: std::collections::BTreeSet<usize> = stats.iter().flatten().map(|s| s.shard.index).collect();
    Some((count, (0..count).filter(|i| !seen.contains(i)).collect()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stats_file_keeps_the_output_name_s_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let out = Path::new(std::ffi::OsStr::from_bytes(b"tags-\xff.jsonl"));
        assert_eq!(stats_path(out).as_os_str().as_bytes(), b"tags-\xff.jsonl.stats.json");
        assert_eq!(stats_path(Path::new("dir/sidecars/")), Path::new("dir/sidecars.stats.json"));
    }

    use super::*;

    #[test]
    fn paths_and_missing_shards() {
        assert_eq!(stats_path(Path::new("t/tags-3.jsonl")), PathBuf::from("t/tags-3.jsonl.stats.json"));
        assert_eq!(stats_path(Path::new("side/")), PathBuf::from("side.stats.json"));
        let s = |index, count| {
            Some(Stats {
                images: String::new(),
                out: String::new(),
                format: "jsonl".into(),
                shard: ShardStats { index, count },
                images_tagged: 0,
                images_failed: 0,
                images_skipped: 0,
                seconds: 0.0,
                images_per_second: 0.0,
                model: String::new(),
                model_sha256: String::new(),
                thresholds: ThresholdStats {
                    source: String::new(),
                    global: 0.5,
                    per_class: None,
                    min_labels: 0,
                    top_k: None,
                },
                complete: true,
                cls_infer: String::new(),
            })
        };
        assert_eq!(missing_shards(&[s(0, 4), s(2, 4), None]), Some((4, vec![1, 3])));
        assert_eq!(missing_shards(&[s(0, 2), s(1, 2)]), Some((2, vec![])));
        assert_eq!(missing_shards(&[s(0, 2), s(1, 3)]), None);
        assert_eq!(missing_shards(&[None]), None);
    }
}
