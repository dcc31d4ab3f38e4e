//! A library folder: one subfolder per asset, each with its `result.json` once finished or
//! failed, and `index.json` over all of them.
//!
//! Workers share nothing but this folder. Every file another worker may read is written
//! atomically (a temporary file renamed over it). The index is never edited in place: it is
//! rebuilt from the assets' own `result.json` files under a lock, so two workers finishing at
//! once both end up in it, and a corrupt or half-written index is simply written again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rewardsds::engine::export::write_atomic;
use rewardsds::engine::rgb_image::RgbImage;
use serde_json::{Value, json};

use super::lock::{Lock, Taken, Worker, lock_waiting, now_seconds, try_lock};

/// The per-asset record's file name.
pub const RESULT: &str = "result.json";
/// The index's file name.
pub const INDEX: &str = "index.json";
/// The contact sheet's file name.
pub const CONTACT_SHEET: &str = "contact_sheet.png";
/// Lock files live here, out of the assets' way.
const LOCKS: &str = ".locks";

pub struct Library {
    pub root: PathBuf,
}

impl Library {
    /// Opens (creating) the library folder; the error names a folder that cannot be made.
    pub fn create(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join(LOCKS))
            .with_context(|| format!("creating the library folder {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// An existing library, for reading only.
    pub fn open(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn asset_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Tries to take the asset `name` for `me`.
    pub fn lock_asset(&self, name: &str, me: &Worker, stale_after: Duration) -> Result<Taken> {
        try_lock(&self.lock_path(name), me, stale_after)
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join(LOCKS).join(format!("{name}.lock"))
    }

    /// The asset's record, if it has a readable one.
    pub fn result(&self, name: &str) -> Option<Value> {
        let path = self.asset_dir(name).join(RESULT);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                log::warn!(
                    "{} is unreadable ({e}); the asset is made again",
                    path.display()
                );
                None
            }
        }
    }

    /// Writes the asset's record (atomically).
    pub fn write_result(&self, name: &str, record: &Value) -> Result<()> {
        let path = self.asset_dir(name).join(RESULT);
        write_atomic(&path, serde_json::to_string_pretty(record)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Every record in the library, by asset name.
    pub fn records(&self) -> Result<Vec<Value>> {
        let mut records = Vec::new();
        let entries = std::fs::read_dir(&self.root)
            .with_context(|| format!("listing {}", self.root.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            if let Some(record) = self.result(&name) {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Ok(records)
    }

    /// Rebuilds `index.json` from the records (under the index lock); returns how many
    /// assets it lists.
    pub fn rebuild_index(&self, me: &Worker) -> Result<usize> {
        let _lock = self.lock_index(me)?;
        let records = self.records()?;
        let index = json!({"version": 1, "updated": now_seconds(), "assets": records});
        let path = self.root.join(INDEX);
        write_atomic(&path, serde_json::to_string_pretty(&index)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(records.len())
    }

    fn lock_index(&self, me: &Worker) -> Result<Lock> {
        lock_waiting(&self.lock_path("index"), me, Duration::from_secs(60))
    }

    /// Writes the contact sheet: one row per finished asset (by name), its turntable at
    /// `view_size` px per view. Returns the rows written; none when nothing is finished.
    pub fn write_contact_sheet(&self, me: &Worker, view_size: u32) -> Result<usize> {
        let _lock = self.lock_index(me)?;
        let mut rows = Vec::new();
        for record in self.records()? {
            if record["status"] != "done" {
                continue;
            }
            let Some(file) = record["files"]["turntable"].as_str() else {
                continue;
            };
            let path = self.root.join(file);
            match RgbImage::load_png(&path) {
                Ok(strip) => rows.push(fit_height(&strip, view_size)),
                Err(e) => log::warn!("contact sheet: skipping {}: {e}", path.display()),
            }
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let width = rows.iter().map(|r| r.width).max().unwrap_or(0);
        let rows: Vec<RgbImage> = rows
            .into_iter()
            .map(|r| pad_width(r, width, [1.0; 3]))
            .collect();
        let n = rows.len();
        let sheet = RgbImage::vstack(&rows);
        let path = self.root.join(CONTACT_SHEET);
        // A hidden name that still ends in .png (the encoder goes by the extension).
        let tmp = self.root.join(".contact_sheet.tmp.png");
        sheet
            .save_png(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(n)
    }
}

/// A turntable strip scaled (nearest) to `height` px tall.
fn fit_height(strip: &RgbImage, height: u32) -> RgbImage {
    if strip.height == height || strip.height == 0 {
        return strip.clone();
    }
    let scale = height as f32 / strip.height as f32;
    let width = ((strip.width as f32 * scale).round() as u32).max(1);
    let mut out = RgbImage::filled(width, height, [0.0; 3]);
    for y in 0..height {
        for x in 0..width {
            let sx = ((x as f32 + 0.5) / scale) as u32;
            let sy = ((y as f32 + 0.5) / scale) as u32;
            let c = strip.pixel(sx.min(strip.width - 1), sy.min(strip.height - 1));
            put(&mut out, x, y, c);
        }
    }
    out
}

/// `image` on a `width`-wide background, left-aligned.
fn pad_width(image: RgbImage, width: u32, background: [f32; 3]) -> RgbImage {
    if image.width == width {
        return image;
    }
    let mut out = RgbImage::filled(width, image.height, background);
    for y in 0..image.height {
        for x in 0..image.width {
            put(&mut out, x, y, image.pixel(x, y));
        }
    }
    out
}

fn put(image: &mut RgbImage, x: u32, y: u32, color: [f32; 3]) {
    let i = 3 * (y as usize * image.width as usize + x as usize);
    image.data[i..i + 3].copy_from_slice(&color);
}
