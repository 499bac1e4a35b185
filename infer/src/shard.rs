//! Deterministic sharding of the sorted image list, so a cluster array job can tag one huge
//! folder: task `I` of `N` tags the `I`-th contiguous slice. Concatenating the outputs of tasks
//! `0..N` in order gives exactly the output of one unsharded run.
//!
//! Where the shard comes from, first match wins:
//! 1. `--shard I/N` (0-based `I`);
//! 2. SLURM array jobs: `SLURM_ARRAY_TASK_ID` and `SLURM_ARRAY_TASK_COUNT`; `I` is the task id
//!    minus `SLURM_ARRAY_TASK_MIN` (0 when unset), so `--array=1-8` works as well as `0-7`;
//! 3. Kubernetes indexed jobs: `JOB_COMPLETION_INDEX` (set by Kubernetes) and
//!    `JOB_COMPLETION_COUNT` (set it yourself in the pod spec to the job's `completions`).
//!
//! With none of them, the whole folder is one shard.

use anyhow::{bail, Context, Result};
use std::ops::Range;

/// Task `index` of `count` (`index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    fn new(index: usize, count: usize, source: &str) -> Result<Shard> {
        if count == 0 {
            bail!("{source}: the shard count must be at least 1");
        }
        if index >= count {
            bail!("{source}: shard index {index} is out of range for {count} shards (indices start at 0)");
        }
        Ok(Shard { index, count })
    }

    /// Parse `I/N`, for example `0/4`.
    pub fn parse(text: &str) -> Result<Shard> {
        let source = format!("--shard {text:?}");
        let (i, n) = text.split_once('/').with_context(|| format!("{source}: expected I/N, for example 0/4"))?;
        let i: usize = i.trim().parse().with_context(|| format!("{source}: {i:?} is not a shard index"))?;
        let n: usize = n.trim().parse().with_context(|| format!("{source}: {n:?} is not a shard count"))?;
        Shard::new(i, n, &source)
    }

    /// The shard from `--shard` or, without it, from the environment (see the module docs).
    pub fn resolve(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        if let Some(text) = flag {
            return Shard::parse(text);
        }
        let num = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .with_context(|| format!("environment variable {name}={v:?} is not a non-negative integer")),
            }
        };
        let pairs = [
            ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", Some("SLURM_ARRAY_TASK_MIN")),
            ("JOB_COMPLETION_INDEX", "JOB_COMPLETION_COUNT", None),
        ];
        for (id_var, count_var, min_var) in pairs {
            match (num(id_var)?, num(count_var)?) {
                (None, None) => continue,
                (Some(id), Some(count)) => {
                    let min = match min_var {
                        Some(m) => num(m)?.unwrap_or(0),
                        None => 0,
                    };
                    let index = id
                        .checked_sub(min)
                        .with_context(|| format!("{id_var}={id} is below {}={min}", min_var.unwrap_or("")))?;
                    return Shard::new(index, count, &format!("{id_var}/{count_var}"));
                }
                (Some(_), None) => bail!("{id_var} is set but {count_var} is not: set both (or pass --shard I/N)"),
                (None, Some(_)) => bail!("{count_var} is set but {id_var} is not: set both (or pass --shard I/N)"),
            }
        }
        Ok(Shard::WHOLE)
    }

    /// The index range of this shard in a list of `len` items: contiguous slices whose sizes
    /// differ by at most one.
    pub fn range(&self, len: usize) -> Range<usize> {
        let bound = |i: usize| (i as u128 * len as u128 / self.count as u128) as usize;
        bound(self.index)..bound(self.index + 1)
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn parses_flag() {
        assert_eq!(Shard::parse("2/5").unwrap(), Shard { index: 2, count: 5 });
        assert_eq!(Shard::parse(" 0 / 1 ").unwrap(), Shard::WHOLE);
        for bad in ["5/5", "1/0", "a/2", "1", "-1/3", "1/2/3", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn flag_wins_over_environment() {
        let e = env(&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert_eq!(Shard::resolve(Some("1/2"), &e).unwrap(), Shard { index: 1, count: 2 });
        assert_eq!(Shard::resolve(None, &e).unwrap(), Shard { index: 3, count: 4 });
    }

    #[test]
    fn slurm_min_offset_and_kubernetes() {
        let e = env(&[("SLURM_ARRAY_TASK_ID", "8"), ("SLURM_ARRAY_TASK_COUNT", "8"), ("SLURM_ARRAY_TASK_MIN", "1")]);
        assert_eq!(Shard::resolve(None, e).unwrap(), Shard { index: 7, count: 8 });
        let e = env(&[("JOB_COMPLETION_INDEX", "0"), ("JOB_COMPLETION_COUNT", "3")]);
        assert_eq!(Shard::resolve(None, e).unwrap(), Shard { index: 0, count: 3 });
        assert_eq!(Shard::resolve(None, env(&[])).unwrap(), Shard::WHOLE);
    }

    #[test]
    fn environment_errors_are_values() {
        assert!(Shard::resolve(None, env(&[("JOB_COMPLETION_INDEX", "2")])).is_err());
        assert!(Shard::resolve(None, env(&[("SLURM_ARRAY_TASK_COUNT", "2")])).is_err());
        assert!(Shard::resolve(None, env(&[("SLURM_ARRAY_TASK_ID", "x"), ("SLURM_ARRAY_TASK_COUNT", "2")])).is_err());
        assert!(Shard::resolve(None, env(&[("JOB_COMPLETION_INDEX", "3"), ("JOB_COMPLETION_COUNT", "3")])).is_err());
    }

    #[test]
    fn ranges_partition_in_order() {
        for len in [0usize, 1, 2, 7, 10, 101] {
            for count in 1..=6 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.range(len);
                    assert_eq!(r.start, next, "len {len} count {count} index {index}");
                    assert!(r.len() == len / count || r.len() == len / count + 1);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
