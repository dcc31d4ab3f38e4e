//! From manifest entries to the configs the assets are made with, each with its folder name
//! and config hash; every config is checked before anything is written.
//!
//! Order, later wins: the preset (the entry's, the manifest's, else `--preset`), the command
//! line's options, the manifest's `seed` and `[overrides]`, the entry's `seed` and
//! `overrides`. The most specific value wins, so a manifest says exactly what it makes.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};
use rewardsds::engine::generate::{GenerateConfig, slug};
use sha2::{Digest, Sha256};

use super::manifest::{Entry, Manifest};
use crate::overrides::{Overrides, set_steps};

/// One asset to make.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The manifest line it came from.
    pub line: usize,
    /// Its folder in the library.
    pub name: String,
    pub preset: String,
    pub config: GenerateConfig,
    /// Says whether a finished asset is still what its entry asks.
    pub hash: String,
}

/// Plans every entry; the first bad one is named by its line.
pub fn plan(manifest: &Manifest, preset: &str, overrides: &Overrides) -> Result<Vec<Planned>> {
    let file = manifest.path.display();
    let mut planned: Vec<Planned> = Vec::with_capacity(manifest.entries.len());
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for entry in &manifest.entries {
        let p = plan_entry(manifest, entry, preset, overrides)
            .map_err(|e| anyhow!("manifest {file} line {}: {e:#}", entry.line))?;
        if let Some(&first) = by_name.get(&p.name) {
            let earlier = &planned[first];
            if earlier.hash == p.hash {
                bail!(
                    "manifest {file} line {} repeats line {} (the same asset `{}`)",
                    p.line,
                    earlier.line,
                    p.name
                );
            }
            bail!(
                "manifest {file} lines {} and {} both make the asset `{}`: give one a \
                 different seed or its own `name`",
                earlier.line,
                p.line,
                p.name
            );
        }
        by_name.insert(p.name.clone(), planned.len());
        planned.push(p);
    }
    Ok(planned)
}

fn plan_entry(
    manifest: &Manifest,
    entry: &Entry,
    preset: &str,
    overrides: &Overrides,
) -> Result<Planned> {
    let preset = entry
        .preset
        .as_deref()
        .or(manifest.defaults.preset.as_deref())
        .unwrap_or(preset);
    let mut config = GenerateConfig::preset(preset)?;
    config.prompt = entry.prompt.trim().to_string();
    overrides.apply(&mut config);
    if let Some(seed) = manifest.defaults.seed {
        config.seed = seed;
    }
    config = apply_table(config, &manifest.defaults.overrides)
        .map_err(|e| anyhow!("the manifest's [overrides]: {e:#}"))?;
    config = apply_table(config, &entry.overrides).map_err(|e| anyhow!("overrides: {e:#}"))?;
    if let Some(seed) = entry.seed {
        config.seed = seed;
    }
    config.validate()?;
    let name = match &entry.name {
        Some(name) => checked_name(name)?,
        None => format!("{}-seed{}", slug(&config.prompt), config.seed),
    };
    let hash = config_hash(&config);
    Ok(Planned {
        line: entry.line,
        name,
        preset: preset.to_string(),
        config,
        hash,
    })
}

/// `config` with the values of `table` (config.toml's keys) written over it, checked.
fn apply_table(mut config: GenerateConfig, table: &toml::Table) -> Result<GenerateConfig> {
    if table.is_empty() {
        return Ok(config);
    }
    // A shorter `steps` leaves the preset's later resolution milestones behind: they go, as
    // with `--steps`, unless the table sets its own.
    let steps = table.get("steps").and_then(toml::Value::as_integer);
    if let Some(steps) = steps.filter(|&s| s > 0)
        && !table.contains_key("resolution_milestones")
    {
        set_steps(&mut config, steps as usize);
    }
    let mut merged = toml::Table::try_from(&config)?;
    merge(&mut merged, table);
    Ok(GenerateConfig::from_toml(&toml::to_string(&merged)?)?)
}

fn merge(into: &mut toml::Table, from: &toml::Table) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A name the entry gives its folder: letters, digits, `-` and `_`, not hidden.
fn checked_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if !ok {
        bail!("name `{name}`: use 1 to 100 letters, digits, `-` and `_` (a folder name)");
    }
    Ok(name.to_string())
}

/// A hash of everything that shapes the asset: the config less where it runs (backend) and
/// how often it checkpoints.
pub fn config_hash(config: &GenerateConfig) -> String {
    let mut c = config.clone();
    c.backend = None;
    c.checkpoint_every = 0;
    let digest = Sha256::digest(c.to_toml().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::batch::manifest::Defaults;

    fn entry(line: usize, prompt: &str) -> Entry {
        Entry {
            line,
            prompt: prompt.into(),
            seed: None,
            preset: None,
            name: None,
            overrides: toml::Table::new(),
        }
    }

    fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest {
            path: PathBuf::from("m.jsonl"),
            defaults: Defaults::default(),
            entries,
        }
    }

    #[test]
    fn the_most_specific_value_wins_and_names_are_stable() {
        let mut m = manifest(vec![entry(1, "a red cube"), entry(2, "a red cube")]);
        m.defaults.seed = Some(4);
        m.defaults.overrides = toml::toml! { steps = 30 };
        m.entries[1].seed = Some(7);
        m.entries[1].overrides = toml::toml! { steps = 20
        [guidance]
        guidance_scale = 12.5 };
        let cli = Overrides::default();
        let p = plan(&m, "fast", &cli).unwrap();
        assert_eq!((p[0].config.seed, p[0].config.steps), (4, 30));
        assert_eq!(p[0].name, "a-red-cube-seed4");
        assert_eq!((p[1].config.seed, p[1].config.steps), (7, 20));
        assert_eq!(p[1].config.guidance.guidance_scale, 12.5);
        assert_eq!(p[1].name, "a-red-cube-seed7");
        // The rest of the preset stays.
        let fast = GenerateConfig::preset("fast").unwrap();
        assert_eq!(p[1].config.render_size, fast.render_size);
        // Same config, same hash; the backend and checkpointing do not count.
        let again = plan(&m, "fast", &cli).unwrap();
        assert_eq!(p[0].hash, again[0].hash);
        assert_ne!(p[0].hash, p[1].hash);
        let mut c = p[0].config.clone();
        c.checkpoint_every = 3;
        c.backend = Some(Default::default());
        assert_eq!(config_hash(&c), p[0].hash);
        c.guidance.guidance_scale += 1.0;
        assert_ne!(config_hash(&c), p[0].hash);
    }

    #[test]
    fn bad_entries_are_named_by_line() {
        let err =
            |m: Manifest| format!("{:#}", plan(&m, "fast", &Overrides::default()).unwrap_err());

        let e = err(manifest(vec![
            entry(1, "a red cube"),
            entry(3, "a red cube"),
        ]));
        assert!(e.contains("line 3 repeats line 1"), "{e}");

        let mut m = manifest(vec![entry(1, "a red cube"), entry(2, "a blue cube")]);
        m.entries[1].name = Some("a-red-cube-seed0".into());
        let e = err(m);
        assert!(e.contains("lines 1 and 2 both make the asset"), "{e}");

        let mut m = manifest(vec![entry(1, "a red cube"), entry(5, "a blue cube")]);
        m.entries[1].overrides = toml::toml! { render_size = 100000 };
        let e = err(m);
        assert!(e.contains("line 5") && e.contains("render_size"), "{e}");

        let mut m = manifest(vec![entry(2, "a red cube")]);
        m.entries[0].overrides = toml::toml! { no_such_key = 1 };
        let e = err(m);
        assert!(e.contains("line 2") && e.contains("no_such_key"), "{e}");

        let mut m = manifest(vec![entry(4, "a red cube")]);
        m.entries[0].preset = Some("nope".into());
        let e = err(m);
        assert!(e.contains("line 4") && e.contains("nope"), "{e}");

        let mut m = manifest(vec![entry(6, "a red cube")]);
        m.entries[0].name = Some("../up".into());
        let e = err(m);
        assert!(e.contains("line 6") && e.contains("folder name"), "{e}");
    }
}
