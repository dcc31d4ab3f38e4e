//! Downloads into the Hugging Face cache with `hf-hub` (cargo feature `hub`).
//!
//! Only what the engine reads is fetched: per component subfolder, the JSON/text configs and
//! the non-variant `*.safetensors` (not `.bin`, `.ckpt`, `.onnx`, `.fp16`/`.ema` variants),
//! plus the files a preset names (ImageReward's `ImageReward.pt`, the aesthetic head's `.pth`).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;

use super::LoadError;

/// Download the files of `repo_id` under `subfolders` (`""` = the root), and `files` (paths in
/// the repo, whatever their kind), into the cache folder `cache` and return the local snapshot
/// folder. The hub is `endpoint`, else `$HF_ENDPOINT`,
/// else huggingface.co; a token saved by `huggingface-cli login` is used for gated repos.
pub(super) fn download(
    cache: &Path,
    repo_id: &str,
    subfolders: &[&str],
    files: &[&str],
    endpoint: Option<&str>,
) -> Result<PathBuf, LoadError> {
    let failed = |reason: String| LoadError::NotCached {
        repo: repo_id.to_string(),
        cache: cache.to_path_buf(),
        reason: format!(
            "{reason} (no network? `huggingface-cli download {repo_id}` on a connected machine \
             fills the cache; HF_HUB_OFFLINE=1 stops the engine from trying)"
        ),
    };
    let mut builder = ApiBuilder::from_env().with_cache_dir(cache.to_path_buf());
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint.to_string());
    }
    let api = builder
        .build()
        .map_err(|e| failed(format!("hub client: {e}")))?;
    let repo = api.model(repo_id.to_string());
    let info = repo
        .info()
        .map_err(|e| failed(format!("listing files: {e}")))?;
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let wanted = to_fetch(&names, subfolders, files).map_err(|reason| LoadError::NotCached {
        repo: repo_id.to_string(),
        cache: cache.to_path_buf(),
        reason,
    })?;
    if wanted.is_empty() {
        return Err(LoadError::NotCached {
            repo: repo_id.to_string(),
            cache: cache.to_path_buf(),
            reason: "the repo has none of the files the engine reads (configs, safetensors)".into(),
        });
    }
    let mut root = None;
    for name in wanted {
        log::info!("downloading {repo_id}/{name}");
        let local = repo
            .get(name)
            .map_err(|e| failed(format!("downloading {name}: {e}")))?;
        // `local` is `<snapshot>/<name>`: strip the name's components to get the snapshot.
        let depth = Path::new(name).components().count();
        root = local.ancestors().nth(depth).map(Path::to_path_buf);
    }
    root.ok_or_else(|| failed("no file downloaded".into()))
}

/// Of the repo's files `names`, those to fetch: the configs and weights of `subfolders` and
/// every one of `files` (an error names one the repo lacks).
fn to_fetch<'a>(
    names: &[&'a str],
    subfolders: &[&str],
    files: &[&str],
) -> Result<Vec<&'a str>, String> {
    if let Some(missing) = files.iter().find(|f| !names.contains(f)) {
        return Err(format!("the repo has no file `{missing}`"));
    }
    Ok(names
        .iter()
        .copied()
        .filter(|name| files.contains(name) || wanted_file(name, subfolders))
        .collect())
}

fn wanted_file(name: &str, subfolders: &[&str]) -> bool {
    let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
    let in_scope = subfolders.is_empty() || subfolders.contains(&dir);
    let config = file.ends_with(".json") || file.ends_with(".txt");
    let weights = file.ends_with(".safetensors")
        && !file.contains(".fp16.")
        && !file.contains(".ema")
        && !file.contains("non_ema");
    in_scope && (config || weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_hub_is_an_error_naming_the_repo_and_the_way_out() {
        let cache = std::env::temp_dir().join(format!("rsds-hub-{}", std::process::id()));
        // Port 9 (discard) on the loopback: nothing listens, the connection is refused at once.
        let err = download(
            &cache,
            "org/missing",
            &["unet"],
            &[],
            Some("http://127.0.0.1:9"),
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LoadError::NotCached { .. }), "{err:?}");
        assert!(message.contains("`org/missing`"), "{message}");
        assert!(message.contains("listing files"), "{message}");
        assert!(message.contains("HF_HUB_OFFLINE=1"), "{message}");
        std::fs::remove_dir_all(&cache).ok();
    }

    #[test]
    fn only_configs_and_plain_safetensors_of_the_asked_subfolders_are_fetched() {
        let sd = ["unet", "vae"];
        assert!(wanted_file("unet/config.json", &sd));
        assert!(wanted_file("unet/diffusion_pytorch_model.safetensors", &sd));
        assert!(!wanted_file(
            "unet/diffusion_pytorch_model.fp16.safetensors",
            &sd
        ));
        assert!(!wanted_file("unet/diffusion_pytorch_model.bin", &sd));
        assert!(!wanted_file(
            "vae/diffusion_pytorch_model.non_ema.safetensors",
            &sd
        ));
        assert!(!wanted_file("safety_checker/model.safetensors", &sd));
        assert!(wanted_file("model.safetensors", &[]));
        assert!(wanted_file("tokenizer.json", &[]));
    }

    #[test]
    fn a_companion_repo_gives_only_the_files_named() {
        let repo = [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
        ];
        let only = [super::super::resolve::ONLY_NAMED_FILES];
        assert_eq!(
            to_fetch(&repo, &only, &["vocab.txt"]).unwrap(),
            ["vocab.txt"]
        );
    }

    #[test]
    fn the_files_a_preset_names_are_fetched_whatever_their_kind() {
        // THUDM/ImageReward's files: the weights are a torch pickle.
        let repo = [
            "ImageReward.pt",
            "med_config.json",
            "README.md",
            "other.bin",
        ];
        let fetched = to_fetch(&repo, &[""], &["ImageReward.pt", "med_config.json"]).unwrap();
        assert_eq!(fetched, ["ImageReward.pt", "med_config.json"]);
        let err = to_fetch(&repo, &[""], &["sac+logos+ava1-l14-linearMSE.pth"]).unwrap_err();
        assert!(err.contains("sac+logos+ava1-l14-linearMSE.pth"), "{err}");
    }
}
