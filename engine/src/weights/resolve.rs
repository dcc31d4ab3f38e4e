//! From a model name to files on disk: a local folder, a known preset or a Hugging Face repo id
//! found in the local Hugging Face cache, or (cargo feature `hub`) downloaded into that cache.
//!
//! The cache layout is the one `huggingface_hub` writes and every HF tool reads:
//! `$HF_HUB_CACHE` (default `$HF_HOME/hub`, default `~/.cache/huggingface/hub`) /
//! `models--{org}--{name}/snapshots/{commit}/...`, with `refs/{branch}` holding the commit.

use std::path::{Path, PathBuf};

use super::LoadError;

/// A model the engine knows by a short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The short name (`sd21-base`).
    pub name: &'static str,
    /// The Hugging Face repo id (`stabilityai/stable-diffusion-2-1-base`).
    pub repo_id: &'static str,
    /// The component subfolders the engine uses (`""` for a repo whose root is the model).
    pub subfolders: &'static [&'static str],
    /// The weight files to load, relative to the repo root, when they are not the standard
    /// `model.safetensors` / `diffusion_pytorch_model.safetensors` of each subfolder.
    pub files: &'static [&'static str],
    /// One line for users: what it is.
    pub about: &'static str,
    /// For models shipped with the project: the folder under `assets/models/` that holds it
    /// (no download, no cache).
    pub bundled: Option<&'static str>,
    /// Files the model needs from another repo, fetched with it (ImageReward's tokenizer is
    /// bert-base-uncased's `vocab.txt`, which THUDM/ImageReward does not hold).
    pub companion: Option<Companion>,
}

/// Files a preset takes from another Hugging Face repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Companion {
    /// The repo (`google-bert/bert-base-uncased`).
    pub repo_id: &'static str,
    /// The files, relative to its root (`vocab.txt`).
    pub files: &'static [&'static str],
}

/// A subfolder no repo has: asked for alone, a download fetches only the files named (not the
/// companion repo's own weights).
pub(super) const ONLY_NAMED_FILES: &str = "\0only-named-files";

const SD_COMPONENTS: &[&str] = &["text_encoder", "tokenizer", "unet", "vae", "scheduler"];

/// The known presets. Repo ids are the ones the diffusers/transformers docs use.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "sd15",
        // The original runwayml repo was taken down; this is its official mirror.
        repo_id: "stable-diffusion-v1-5/stable-diffusion-v1-5",
        subfolders: SD_COMPONENTS,
        files: &[],
        bundled: None,
        companion: None,
        about: "Stable Diffusion 1.5, 512 px, epsilon prediction, CLIP ViT-L/14 text encoder",
    },
    Preset {
        name: "sd21-base",
        repo_id: "stabilityai/stable-diffusion-2-1-base",
        subfolders: SD_COMPONENTS,
        files: &[],
        bundled: None,
        companion: None,
        about: "Stable Diffusion 2.1 base, 512 px, epsilon prediction, OpenCLIP ViT-H/14 text encoder",
    },
    Preset {
        name: "sd21",
        repo_id: "stabilityai/stable-diffusion-2-1",
        subfolders: SD_COMPONENTS,
        files: &[],
        bundled: None,
        companion: None,
        about: "Stable Diffusion 2.1, 768 px, v-prediction, OpenCLIP ViT-H/14 text encoder",
    },
    Preset {
        name: "mvdream",
        repo_id: "ashawkey/mvdream-sd2.1-diffusers",
        subfolders: SD_COMPONENTS,
        files: &[],
        bundled: None,
        companion: None,
        about: "MVDream sd-v2.1-base-4view (diffusers-style conversion): 4 views of 256 px with cameras, SD 2.1's OpenCLIP ViT-H/14 text encoder",
    },
    Preset {
        name: "image-reward",
        repo_id: "THUDM/ImageReward",
        subfolders: &[""],
        files: &["ImageReward.pt", "med_config.json"],
        bundled: None,
        // BLIP's tokenizer: `BertTokenizer.from_pretrained("bert-base-uncased")`.
        companion: Some(Companion {
            repo_id: "google-bert/bert-base-uncased",
            files: &["vocab.txt"],
        }),
        about: "ImageReward v1.0 (BLIP ViT-L/16 + BERT-base): human-preference reward for a prompt and an image",
    },
    Preset {
        name: "taesd",
        repo_id: "madebyollin/taesd",
        subfolders: &[""],
        files: &[],
        bundled: None,
        companion: None,
        about: "TAESD (diffusers AutoencoderTiny): tiny distilled decoder/encoder of SD 1.x/2.x latents, for cheap decoding",
    },
    Preset {
        name: "clip-vit-l-14",
        repo_id: "openai/clip-vit-large-patch14",
        subfolders: &[""],
        files: &[],
        bundled: None,
        companion: None,
        about: "OpenAI CLIP ViT-L/14 (text and vision towers): CLIPScore and the aesthetic head's features",
    },
    Preset {
        name: "laion-aesthetic",
        repo_id: "camenduru/improved-aesthetic-predictor",
        subfolders: &[""],
        files: &[AESTHETIC_FILE],
        bundled: None,
        companion: None,
        about: "LAION improved aesthetic predictor (sac+logos+ava1-l14-linearMSE) on CLIP ViT-L/14 image embeddings",
    },
    Preset {
        name: "tiny-world",
        repo_id: "rewardsds/tiny-world",
        subfolders: &["text_encoder", "tokenizer", "unet", "scheduler"],
        files: &[],
        bundled: Some("tiny-world"),
        companion: None,
        about: "Tiny World: the built-in 32 px pixel-space prior of coloured primitives (offline, CPU-sized)",
    },
    Preset {
        name: "tiny-world-reward",
        repo_id: "rewardsds/tiny-world",
        subfolders: &[""],
        files: &[],
        bundled: Some("tiny-world/reward"),
        companion: None,
        about: "Tiny World's CLIP, used as the CLIPScore reward",
    },
    Preset {
        name: "tiny-world-judge",
        repo_id: "rewardsds/tiny-world",
        subfolders: &[""],
        files: &[],
        bundled: Some("tiny-world/judge"),
        companion: None,
        about: "Tiny World's second CLIP (other seed and width), used only to evaluate",
    },
];

/// Where the bundled models live: `$REWARDSDS_MODELS` if set, else the checkout's
/// `assets/models` (the folder this crate was built from), else `./assets/models`.
pub fn bundled_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REWARDSDS_MODELS").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/models");
    if checkout.is_dir() {
        checkout
    } else {
        PathBuf::from("assets/models")
    }
}

/// The aesthetic head's weights as published (a torch pickle, read without running code).
pub const AESTHETIC_FILE: &str = "sac+logos+ava1-l14-linearMSE.pth";

/// The preset called `name`, or [`LoadError::UnknownPreset`] listing the known ones.
pub fn preset(name: &str) -> Result<&'static Preset, LoadError> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| LoadError::UnknownPreset {
            name: name.to_string(),
            known: PRESETS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The Hugging Face hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let cache = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

/// The snapshot folder of `repo_id` at `revision` (a branch/tag name with a `refs/` file, or a
/// commit hash) in the cache folder `cache`.
pub fn cached_repo(cache: &Path, repo_id: &str, revision: &str) -> Result<PathBuf, LoadError> {
    let not_cached = |reason: String| LoadError::NotCached {
        repo: repo_id.to_string(),
        cache: cache.to_path_buf(),
        reason,
    };
    let repo_dir = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    if !repo_dir.is_dir() {
        return Err(not_cached(format!(
            "no folder {}; {}",
            repo_dir.display(),
            download_hint(repo_id)
        )));
    }
    let ref_file = repo_dir.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(text) => text.trim().to_string(),
        // Not a branch or tag: a commit hash names the snapshot directly.
        Err(_) => revision.to_string(),
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if snapshot.is_dir() {
        Ok(snapshot)
    } else {
        Err(not_cached(format!(
            "revision `{revision}` (snapshot {}) is not there; {}",
            snapshot.display(),
            download_hint(repo_id)
        )))
    }
}

fn download_hint(repo_id: &str) -> String {
    let manual = format!("download it with `huggingface-cli download {repo_id}`");
    if !cfg!(feature = "hub") {
        format!("{manual}, or build with the cargo feature `hub` (on by default)")
    } else if Fetch::from_env() == Fetch::CacheOnly {
        format!("{manual}, or unset HF_HUB_OFFLINE so the engine fetches it")
    } else {
        manual
    }
}

/// Whether resolving a preset or repo id may download what the cache lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Only the local Hugging Face cache (no network).
    CacheOnly,
    /// Download into the cache what it lacks (cargo feature `hub`; else the same as
    /// `CacheOnly`).
    Download,
}

impl Fetch {
    /// `Download` when the `hub` feature is on and `HF_HUB_OFFLINE` (the variable every Hugging
    /// Face tool honours) is unset or false; else `CacheOnly`.
    pub fn from_env() -> Self {
        Self::from_offline_var(std::env::var("HF_HUB_OFFLINE").ok().as_deref())
    }

    /// [`from_env`](Self::from_env) given the value of `HF_HUB_OFFLINE`.
    pub fn from_offline_var(value: Option<&str>) -> Self {
        let offline = value.is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        if cfg!(feature = "hub") && !offline {
            Self::Download
        } else {
            Self::CacheOnly
        }
    }
}

/// Where a model spec leads: a local folder, or a preset/repo in the Hugging Face cache
/// ([`hf_hub_cache`]).
///
/// `spec` is tried as, in order: an existing folder; a [preset](PRESETS) name; an `org/name`
/// repo id. A preset or repo id missing from the cache is downloaded when [`Fetch::from_env`]
/// allows it (cargo feature `hub`, on by default; `HF_HUB_OFFLINE=1` turns it off).
pub fn resolve_model(spec: &str) -> Result<PathBuf, LoadError> {
    resolve_model_in(spec, &hf_hub_cache(), Fetch::from_env())
}

/// [`resolve_model`] with an explicit Hugging Face cache folder and download policy.
pub fn resolve_model_in(spec: &str, cache: &Path, fetch: Fetch) -> Result<PathBuf, LoadError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if let Ok(preset) = preset(spec) {
        if let Some(folder) = preset.bundled {
            let dir = bundled_models_dir().join(folder);
            return if dir.is_dir() {
                Ok(dir)
            } else {
                Err(LoadError::MissingFolder { path: dir })
            };
        }
        let dir = resolve_repo(
            cache,
            preset.repo_id,
            preset.subfolders,
            preset.files,
            fetch,
        )?;
        if let Some(companion) = preset.companion
            && !companion.files.iter().all(|f| dir.join(f).is_file())
        {
            resolve_repo(
                cache,
                companion.repo_id,
                &[ONLY_NAMED_FILES],
                companion.files,
                fetch,
            )?;
        }
        return Ok(dir);
    }
    let path_like = path.is_absolute()
        || spec.starts_with('.')
        || spec.starts_with('~')
        || spec.contains('\\')
        || spec.matches('/').count() > 1
        || path.exists();
    if path_like {
        return Err(LoadError::MissingFolder {
            path: path.to_path_buf(),
        });
    }
    if spec.contains('/') {
        return resolve_repo(cache, spec, &[], &[], fetch);
    }
    Err(preset(spec).unwrap_err())
}

/// Where `file` of `preset`'s companion repo is for the model in `model_dir`: the model's own
/// folder when it holds the file (a folder prepared by hand), else the companion repo's
/// snapshot in `cache`. The error names the file, the repo and how to get it.
pub fn companion_file(
    model_dir: &Path,
    preset: &Preset,
    file: &str,
    cache: &Path,
) -> Result<PathBuf, LoadError> {
    let own = model_dir.join(file);
    if own.is_file() {
        return Ok(own);
    }
    let Some(companion) = preset.companion else {
        return Err(LoadError::MissingFile {
            path: own,
            hint: None,
        });
    };
    let missing = |reason: String| LoadError::NotCached {
        repo: companion.repo_id.to_string(),
        cache: cache.to_path_buf(),
        reason: format!(
            "{file} is in neither {} nor the {} snapshot ({reason}); `huggingface-cli \
             download {} {file}` fetches it, or copy it into the model folder",
            model_dir.display(),
            companion.repo_id,
            companion.repo_id
        ),
    };
    let snapshot = cached_repo(cache, companion.repo_id, "main")
        .map_err(|_| missing("the repo is not cached".into()))?;
    let path = snapshot.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(format!("{} lacks it", snapshot.display())))
    }
}

/// The folder of one component of a resolved model (`""` is the model root).
pub fn component_dir(root: &Path, subfolder: &str) -> Result<PathBuf, LoadError> {
    let dir = if subfolder.is_empty() {
        root.to_path_buf()
    } else {
        root.join(subfolder)
    };
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(LoadError::MissingFolder { path: dir })
    }
}

fn resolve_repo(
    cache: &Path,
    repo_id: &str,
    subfolders: &[&str],
    files: &[&str],
    fetch: Fetch,
) -> Result<PathBuf, LoadError> {
    #[cfg(feature = "hub")]
    if fetch == Fetch::Download {
        return super::hub::HubClient::from_env().snapshot(cache, repo_id, subfolders, files);
    }
    let _ = (subfolders, files, fetch);
    cached_repo(cache, repo_id, "main")
}

/// The weight files that hold one model's weights, in load order:
/// - the shards listed by a `*.safetensors.index.json`, if there is one;
/// - else `model.safetensors` or `diffusion_pytorch_model.safetensors`;
/// - else their `.fp16` variants;
/// - else every `*.safetensors` in the folder (treated as shards: a key in two is an error);
/// - else the one torch pickle (`.bin`, `.pt`, `.pth`, `.ckpt`): burn-store parses pickles
///   without running any code, so research checkpoints load as they are published.
///
/// Several pickles and no safetensors is [`LoadError::NoWeights`] naming them (which one is
/// meant cannot be guessed).
///
/// Under [`set_random_init_for_benchmarks`](super::set_random_init_for_benchmarks) it lists no
/// files: the models keep their random initial weights.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if !dir.is_dir() {
        return Err(LoadError::MissingFolder {
            path: dir.to_path_buf(),
        });
    }
    if super::random_init() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();

    if let Some(index) = names
        .iter()
        .find(|n| n.ends_with(".safetensors.index.json"))
    {
        return shards_from_index(&dir.join(index));
    }
    for preferred in [
        "model.safetensors",
        "diffusion_pytorch_model.safetensors",
        "model.fp16.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
    ] {
        if names.iter().any(|n| n == preferred) {
            return Ok(vec![dir.join(preferred)]);
        }
    }
    let all: Vec<PathBuf> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .map(|n| dir.join(n))
        .collect();
    if !all.is_empty() {
        return Ok(all);
    }
    let pickled: Vec<&String> = names
        .iter()
        .filter(|n| super::is_torch_pickle(Path::new(n.as_str())))
        .collect();
    match pickled.as_slice() {
        [one] => Ok(vec![dir.join(one.as_str())]),
        [] => Err(LoadError::NoWeights {
            path: dir.to_path_buf(),
            hint: None,
        }),
        several => Err(LoadError::NoWeights {
            path: dir.to_path_buf(),
            hint: Some(format!(
                "it holds several torch checkpoints ({}) and no safetensors: keep the one to load",
                several
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }),
    }
}

/// The shard files named in a `*.safetensors.index.json` (`weight_map`: key -> file).
fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let bad = |reason: String| LoadError::BadConfig {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    if files.is_empty() {
        return Err(bad("`weight_map` names no file".into()));
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Read and parse a JSON config file (`config.json`, `tokenizer_config.json`, ...), naming the
/// file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::MissingFile {
                path: path.to_path_buf(),
                hint: None,
            });
        }
        Err(source) => {
            return Err(LoadError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text).map_err(|e| LoadError::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_preset_lists_known_ones() {
        let err = preset("sd3").unwrap_err().to_string();
        assert!(err.contains("`sd3`"), "{err}");
        for p in PRESETS {
            assert!(err.contains(p.name), "{err}");
        }
    }

    #[test]
    fn hf_hub_offline_turns_downloads_off() {
        let online = if cfg!(feature = "hub") {
            Fetch::Download
        } else {
            Fetch::CacheOnly
        };
        for value in [None, Some("0"), Some("false"), Some("")] {
            assert_eq!(Fetch::from_offline_var(value), online, "{value:?}");
        }
        for value in ["1", "TRUE", "yes", " on "] {
            assert_eq!(
                Fetch::from_offline_var(Some(value)),
                Fetch::CacheOnly,
                "{value}"
            );
        }
    }

    #[test]
    fn a_companion_file_comes_from_the_model_folder_or_the_companion_repo() {
        let tmp = std::env::temp_dir().join(format!("rsds-companion-{}", std::process::id()));
        let snapshot = |repo: &str| {
            let root = tmp.join(format!("models--{}", repo.replace('/', "--")));
            std::fs::create_dir_all(root.join("refs")).unwrap();
            std::fs::create_dir_all(root.join("snapshots/c0ffee")).unwrap();
            std::fs::write(root.join("refs/main"), "c0ffee").unwrap();
            root.join("snapshots/c0ffee")
        };
        let image_reward = preset("image-reward").unwrap();
        let bert = image_reward.companion.unwrap().repo_id;
        let model = snapshot(image_reward.repo_id);
        for f in image_reward.files {
            std::fs::write(model.join(f), "x").unwrap();
        }
        // Offline and the companion not cached: resolving the preset names the repo.
        let err = resolve_model_in("image-reward", &tmp, Fetch::CacheOnly)
            .unwrap_err()
            .to_string();
        assert!(err.contains(bert), "{err}");
        let err = companion_file(&model, image_reward, "vocab.txt", &tmp)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocab.txt") && err.contains(bert), "{err}");
        // Cached: the preset resolves to its own folder, and the file comes from the companion.
        let vocab = snapshot(bert).join("vocab.txt");
        std::fs::write(&vocab, "[PAD]").unwrap();
        assert_eq!(
            resolve_model_in("image-reward", &tmp, Fetch::CacheOnly).unwrap(),
            model
        );
        assert_eq!(
            companion_file(&model, image_reward, "vocab.txt", &tmp).unwrap(),
            vocab
        );
        // A model folder that holds the file itself wins.
        std::fs::write(model.join("vocab.txt"), "[PAD]").unwrap();
        assert_eq!(
            companion_file(&model, image_reward, "vocab.txt", &tmp).unwrap(),
            model.join("vocab.txt")
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn cache_layout_resolves_refs() {
        let tmp = std::env::temp_dir().join(format!("rsds-hfcache-{}", std::process::id()));
        let repo = tmp.join("models--org--name");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        assert_eq!(
            cached_repo(&tmp, "org/name", "main").unwrap(),
            repo.join("snapshots/abc123")
        );
        assert_eq!(
            cached_repo(&tmp, "org/name", "abc123").unwrap(),
            repo.join("snapshots/abc123")
        );
        let err = cached_repo(&tmp, "org/other", "main")
            .unwrap_err()
            .to_string();
        assert!(err.contains("org/other"), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
