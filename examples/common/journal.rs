//! A benchmark's run journal (included with `#[path = "common/journal.rs"] mod journal;`):
//! every finished run is appended as one JSON line, so a benchmark of many CPU-hours can be
//! run in chunks (by seed, by scene, across sessions) and a cut run loses only the asset in
//! flight; runs already in the journal are read back instead of run again.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// One finished asset and its scores.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Run {
    /// The settings every method shared (steps, overrides, backend): runs under other
    /// settings are not reused.
    pub settings: String,
    pub scene: String,
    pub caption: String,
    /// "seen" or "held-out".
    pub group: String,
    pub seed: u64,
    pub method: String,
    pub steps: usize,
    pub seconds: f64,
    pub views: usize,
    /// Views from which the judge retrieved the caption (top-1).
    pub retrieved_views: usize,
    pub clip_score: f32,
    /// Objects whose colour took the asked-for shape, of `shapes` checked (0 when the
    /// composition cannot be checked).
    pub shapes_right: usize,
    pub shapes: usize,
    /// Sum of the checked objects' asked-shape fit errors.
    pub shape_error: f32,
}

/// The runs of a journal file (or of this process only, without one).
pub struct Journal {
    path: Option<PathBuf>,
    runs: Vec<Run>,
}

impl Journal {
    /// Reads `path` when it exists (a last line torn by a cut is dropped from the file with a
    /// warning; any other bad line is an error naming it); without a path nothing is kept
    /// between runs.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let mut runs = Vec::new();
        if let Some(path) = path.filter(|p| p.exists()) {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the journal {}", path.display()))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str::<Run>(line) {
                    Ok(run) => runs.push(run),
                    Err(e) if i + 1 == lines.len() && !text.ends_with('\n') => {
                        log::warn!(
                            "{}: dropping its torn last line ({e}); that run is run again",
                            path.display()
                        );
                        let whole = &text[..text.rfind('\n').map_or(0, |n| n + 1)];
                        std::fs::write(path, whole)
                            .with_context(|| format!("rewriting the journal {}", path.display()))?;
                    }
                    Err(e) => bail!(
                        "{} line {}: not a benchmark run: {e}",
                        path.display(),
                        i + 1
                    ),
                }
            }
        }
        Ok(Self {
            path: path.map(Path::to_path_buf),
            runs,
        })
    }

    /// The journal's run of this asset, if it has one.
    pub fn find(
        &self,
        settings: &str,
        scene: &str,
        caption: &str,
        seed: u64,
        method: &str,
    ) -> Option<&Run> {
        self.runs.iter().find(|r| {
            r.settings == settings
                && r.scene == scene
                && r.caption == caption
                && r.seed == seed
                && r.method == method
        })
    }

    /// Keeps `run` and appends it to the file (a whole line at once, flushed).
    pub fn record(&mut self, run: Run) -> Result<()> {
        if let Some(path) = &self.path {
            let mut line = serde_json::to_string(&run)?;
            line.push('\n');
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the journal {}", path.display()))?;
            file.write_all(line.as_bytes())
                .and_then(|()| file.flush())
                .with_context(|| format!("writing the journal {}", path.display()))?;
        }
        self.runs.push(run);
        Ok(())
    }
}
