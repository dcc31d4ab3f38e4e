//! `--shard I/N`: which entries of a manifest one of N workers makes. Entry k (in manifest
//! order) goes to worker k mod N: deterministic, balanced to within one entry, and the same
//! for a requeued worker.

use std::str::FromStr;

use anyhow::{Context, bail};

/// Worker `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole manifest, one worker.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether the entry at `position` (0-based, manifest order) is this worker's.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let bad = || format!("--shard {s}: expected I/N, worker I of N counted from 0 (0/4)");
        let (i, n) = s.split_once('/').with_context(bad)?;
        let index: usize = i.trim().parse().with_context(bad)?;
        let count: usize = n.trim().parse().with_context(bad)?;
        if count == 0 {
            bail!("--shard {s}: the number of workers must be at least 1");
        }
        if index >= count {
            bail!(
                "--shard {s}: worker {index} does not exist among {count} (they are 0 to {})",
                count - 1
            );
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_goes_to_exactly_one_worker_for_any_count() {
        for entries in 0..40 {
            for count in 1..=12 {
                let mut owners = vec![0usize; entries];
                let mut sizes = Vec::new();
                for index in 0..count {
                    let shard: Shard = format!("{index}/{count}").parse().unwrap();
                    let mine: Vec<usize> = (0..entries).filter(|&k| shard.owns(k)).collect();
                    for &k in &mine {
                        owners[k] += 1;
                    }
                    sizes.push(mine.len());
                }
                assert!(
                    owners.iter().all(|&o| o == 1),
                    "{entries} entries, {count} workers"
                );
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "unbalanced: {sizes:?}");
            }
        }
    }

    #[test]
    fn bad_shard_specs_are_refused_with_the_reason() {
        let err = |s: &str| format!("{:#}", s.parse::<Shard>().unwrap_err());
        assert!(err("3/2").contains("worker 3 does not exist among 2"));
        assert!(err("2/2").contains("they are 0 to 1"));
        assert!(err("0/0").contains("at least 1"));
        for s in ["", "1", "a/2", "1/b", "-1/2", "1/2/3"] {
            assert!(err(s).contains("expected I/N"), "{s}: {}", err(s));
        }
        assert_eq!(
            " 1 / 4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
    }
}
