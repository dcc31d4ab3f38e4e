//! Downloads into the Hugging Face cache with `hf-hub` (cargo feature `hub`).
//!
//! Only what the engine reads is fetched: per component subfolder, the JSON/text configs and
//! the non-variant `*.safetensors` (not `.bin`, `.ckpt`, `.onnx`, `.fp16`/`.ema` variants).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;

use super::LoadError;

/// Download the files of `repo_id` into the cache folder `cache` under `subfolders` (`""` = the root) and return the local
/// snapshot folder.
pub(super) fn download(
    cache: &Path,
    repo_id: &str,
    subfolders: &[&str],
) -> Result<PathBuf, LoadError> {
    let failed = |reason: String| LoadError::NotCached {
        repo: repo_id.to_string(),
        cache: cache.to_path_buf(),
        reason,
    };
    let api = ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .build()
        .map_err(|e| failed(format!("hub client: {e}")))?;
    let repo = api.model(repo_id.to_string());
    let info = repo
        .info()
        .map_err(|e| failed(format!("listing files: {e}")))?;
    let wanted: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|name| wanted_file(name, subfolders))
        .collect();
    if wanted.is_empty() {
        return Err(failed(
            "the repo has none of the files the engine reads".into(),
        ));
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
