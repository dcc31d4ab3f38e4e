//! Batch manifests: what to make, read from a TOML file, a JSON Lines file, or a plain text
//! file of prompts, each entry with the line it came from so an error can point at it.
//!
//! TOML (`.toml`): top-level defaults, then one `[[asset]]` table per entry:
//! ```toml
//! preset = "fast"          # for entries without their own
//! seed = 0
//! [overrides]              # config values for every entry (any key of config.toml)
//! steps = 200
//! [[asset]]
//! prompt = "a red cube on top of a blue sphere"
//! seed = 3                 # optional: prompt, seed, preset, name, overrides
//! ```
//! JSON Lines (`.jsonl`, `.ndjson`): one entry object per line, the same keys as `[[asset]]`.
//! Anything else: one prompt per line; blank lines and lines starting with `#` are skipped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// One asset the manifest asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// 1-based line of the manifest the entry starts on.
    pub line: usize,
    pub prompt: String,
    pub seed: Option<u64>,
    pub preset: Option<String>,
    /// The asset's folder name in the library, instead of one made from prompt and seed.
    pub name: Option<String>,
    /// Config values (dotted tables as in config.toml), applied over the preset.
    pub overrides: toml::Table,
}

/// Values a TOML manifest sets for all its entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Defaults {
    pub preset: Option<String>,
    pub seed: Option<u64>,
    pub overrides: toml::Table,
}

/// A manifest read and checked for shape (the configs are checked when planned).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub defaults: Defaults,
    pub entries: Vec<Entry>,
}

/// An entry's keys, in TOML and JSON Lines alike.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFields {
    prompt: String,
    seed: Option<u64>,
    preset: Option<String>,
    name: Option<String>,
    #[serde(default)]
    overrides: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlManifest {
    preset: Option<String>,
    seed: Option<u64>,
    #[serde(default)]
    overrides: toml::Table,
    #[serde(default)]
    asset: Vec<EntryFields>,
}

impl EntryFields {
    fn into_entry(self, line: usize) -> Entry {
        Entry {
            line,
            prompt: self.prompt,
            seed: self.seed,
            preset: self.preset,
            name: self.name,
            overrides: self.overrides,
        }
    }
}

impl Manifest {
    /// Reads `path`; the error names the file and, for a bad entry, its line.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the manifest {}", path.display()))?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let (defaults, entries) = match ext.as_deref() {
            Some("toml") => parse_toml(&text),
            Some("jsonl" | "ndjson") => parse_jsonl(&text).map(|e| (Defaults::default(), e)),
            Some("json") => bail!("a JSON manifest is one entry object per line: name it .jsonl"),
            _ => Ok((Defaults::default(), parse_text(&text))),
        }
        .with_context(|| format!("manifest {}", path.display()))?;
        if entries.is_empty() {
            bail!("manifest {} has no entries", path.display());
        }
        for entry in &entries {
            if entry.prompt.trim().is_empty() {
                bail!(
                    "manifest {} line {}: the prompt is empty",
                    path.display(),
                    entry.line
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            defaults,
            entries,
        })
    }
}

fn parse_toml(text: &str) -> Result<(Defaults, Vec<Entry>)> {
    let manifest: TomlManifest = toml::from_str(text)?;
    // toml keeps no spans in derived structs: the n-th entry starts at the n-th `[[asset]]`.
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[asset]]"))
        .map(|(i, _)| i + 1)
        .collect();
    let entries = manifest
        .asset
        .into_iter()
        .enumerate()
        .map(|(i, fields)| fields.into_entry(lines.get(i).copied().unwrap_or(0)))
        .collect();
    let defaults = Defaults {
        preset: manifest.preset,
        seed: manifest.seed,
        overrides: manifest.overrides,
    };
    Ok((defaults, entries))
}

fn parse_jsonl(text: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: EntryFields =
            serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        entries.push(fields.into_entry(i + 1));
    }
    Ok(entries)
}

fn parse_text(text: &str) -> Vec<Entry> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| Entry {
            line: i + 1,
            prompt: l.trim().to_string(),
            seed: None,
            preset: None,
            name: None,
            overrides: toml::Table::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rewardsds-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_three_formats_give_entries_with_their_lines() {
        let text = write("a.txt", "# props\na red cube\n\n  a blue sphere  \n");
        let m = Manifest::read(&text).unwrap();
        let got: Vec<(usize, &str)> = m
            .entries
            .iter()
            .map(|e| (e.line, e.prompt.as_str()))
            .collect();
        assert_eq!(got, [(2, "a red cube"), (4, "a blue sphere")]);

        let jsonl = write(
            "a.jsonl",
            "{\"prompt\": \"a red cube\", \"seed\": 3}\n\n{\"prompt\": \"a blue sphere\", \
             \"name\": \"ball\", \"overrides\": {\"steps\": 10, \"guidance\": {\"guidance_scale\": 7.5}}}\n",
        );
        let m = Manifest::read(&jsonl).unwrap();
        assert_eq!(m.entries[0].seed, Some(3));
        assert_eq!(m.entries[1].line, 3);
        assert_eq!(m.entries[1].name.as_deref(), Some("ball"));
        assert_eq!(m.entries[1].overrides["steps"].as_integer(), Some(10));
        assert_eq!(
            m.entries[1].overrides["guidance"]["guidance_scale"].as_float(),
            Some(7.5)
        );

        let toml = write(
            "a.toml",
            "preset = \"fast-sds\"\nseed = 2\n[overrides]\nsteps = 5\n\n[[asset]]\nprompt = \"a red cube\"\n\n[[asset]]\nprompt = \"a blue sphere\"\nseed = 9\n",
        );
        let m = Manifest::read(&toml).unwrap();
        assert_eq!(m.defaults.preset.as_deref(), Some("fast-sds"));
        assert_eq!(m.defaults.seed, Some(2));
        assert_eq!(m.defaults.overrides["steps"].as_integer(), Some(5));
        let lines: Vec<usize> = m.entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, [6, 9]);
        assert_eq!(m.entries[1].seed, Some(9));
    }

    #[test]
    fn bad_manifests_are_refused_naming_the_file_and_line() {
        let err = |path: PathBuf| format!("{:#}", Manifest::read(&path).unwrap_err());

        let missing = std::env::temp_dir().join("rewardsds-no-such-manifest.txt");
        assert!(err(missing).contains("rewardsds-no-such-manifest.txt"));

        let e = err(write("empty.txt", "# nothing\n\n"));
        assert!(e.contains("empty.txt has no entries"), "{e}");

        let e = err(write(
            "bad.jsonl",
            "{\"prompt\": \"a red cube\"}\n{\"prompt\": \"a blue\n",
        ));
        assert!(e.contains("bad.jsonl") && e.contains("line 2"), "{e}");

        let e = err(write("typo.jsonl", "{\"promt\": \"a red cube\"}\n"));
        assert!(e.contains("line 1") && e.contains("promt"), "{e}");

        let e = err(write("blank.jsonl", "{\"prompt\": \"  \"}\n"));
        assert!(e.contains("line 1: the prompt is empty"), "{e}");

        let e = err(write("bad.toml", "[[asset]]\nprompt = 3\n"));
        assert!(e.contains("bad.toml") && e.contains("line 2"), "{e}");

        let e = err(write("one.json", "{}"));
        assert!(e.contains(".jsonl"), "{e}");
    }
}
