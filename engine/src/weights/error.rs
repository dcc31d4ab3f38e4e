//! [`LoadError`]: everything that can go wrong between a model name and a loaded module.

use std::path::PathBuf;

/// Why a model could not be found or loaded. Every variant names the file, folder or tensor at
/// fault, so the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The model folder does not exist.
    #[error("model folder not found: {}", path.display())]
    MissingFolder {
        /// The folder that was looked for.
        path: PathBuf,
    },
    /// A file the model needs (weights, `config.json`, tokenizer files) is not there.
    #[error("file not found: {}{}", path.display(), hint_suffix(hint))]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What to do about it, if there is something specific to say.
        hint: Option<String>,
    },
    /// The folder exists but holds no `*.safetensors` file.
    #[error("no .safetensors weights in {}{}", path.display(), hint_suffix(hint))]
    NoWeights {
        /// The folder that was searched.
        path: PathBuf,
        /// What to do about it (e.g. how to convert a `.pth`).
        hint: Option<String>,
    },
    /// Reading a file failed at the OS level.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's header or layout is invalid (corrupt or truncated file).
    #[error("corrupt or truncated weights file {}: {reason}", path.display())]
    CorruptFile {
        /// The file at fault.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// One tensor's data could not be read or converted.
    #[error("cannot read tensor `{tensor}` from {}: {reason}", path.display())]
    CorruptTensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's key in the file.
        tensor: String,
        /// What went wrong.
        reason: String,
    },
    /// A tensor in the file has a different shape than the module built from the config.
    #[error(
        "shape mismatch for tensor `{tensor}` in {}: the model (from its config) expects {expected:?}, the file has {found:?}",
        path.display()
    )]
    ShapeMismatch {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's key in the file.
        tensor: String,
        /// Shape the module expects, in the file's layout (PyTorch `[out, in]` for linear weights).
        expected: Vec<usize>,
        /// Shape stored in the file.
        found: Vec<usize>,
    },
    /// The module has parameters that no file provides.
    #[error(
        "{count} tensor(s) missing from {files}: {}{}{}",
        first.join(", "),
        if *count > first.len() { ", ..." } else { "" },
        if unexpected.is_empty() {
            String::new()
        } else {
            format!(
                "; the file holds tensors this model has no place for, such as {} \
                 (is it a checkpoint of another model?)",
                unexpected.join(", ")
            )
        }
    )]
    MissingKeys {
        /// The files that were searched, joined for display.
        files: String,
        /// How many keys are missing in all.
        count: usize,
        /// The first few missing keys (checkpoint naming).
        first: Vec<String>,
        /// The first few file keys (after remapping) the model has no place for: what the
        /// file looks like when it is not this model's.
        unexpected: Vec<String>,
    },
    /// The files hold tensors the module has no place for (only with [`KeyPolicy::Error`]).
    ///
    /// [`KeyPolicy::Error`]: crate::weights::KeyPolicy::Error
    #[error(
        "{count} unexpected tensor(s) in {files}: {}{}",
        first.join(", "),
        if *count > first.len() { ", ..." } else { "" }
    )]
    UnexpectedKeys {
        /// The files that were loaded, joined for display.
        files: String,
        /// How many keys are unexpected in all.
        count: usize,
        /// The first few unexpected keys.
        first: Vec<String>,
    },
    /// Two weight files hold the same key (a broken shard set).
    #[error("tensor `{tensor}` is in both {} and {}", first.display(), second.display())]
    DuplicateKey {
        /// The key.
        tensor: String,
        /// The first file that holds it.
        first: PathBuf,
        /// The second file that holds it.
        second: PathBuf,
    },
    /// A `config.json` (or tokenizer config) could not be parsed or has impossible values.
    #[error("bad config {}: {reason}", path.display())]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The tokenizer files could not be loaded, or encoding failed.
    #[error("tokenizer error ({}): {reason}", path.display())]
    Tokenizer {
        /// The tokenizer file or folder.
        path: PathBuf,
        /// What the tokenizer library said.
        reason: String,
    },
    /// A model name that is neither a folder, a known preset nor a cached hub repo.
    #[error("unknown model preset `{name}`; known presets: {known}")]
    UnknownPreset {
        /// The name that was asked for.
        name: String,
        /// The known presets, joined for display.
        known: String,
    },
    /// A hub repo that is not in the local Hugging Face cache (and the `hub` feature is off or
    /// the download failed).
    #[error("`{repo}` is not in the Hugging Face cache {}: {reason}", cache.display())]
    NotCached {
        /// The repo id (`org/name`).
        repo: String,
        /// The cache folder that was searched.
        cache: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!(" ({h})"),
        None => String::new(),
    }
}
