//! Loading `*.safetensors` files (diffusers/transformers layout) and torch pickles (`.pt`,
//! `.pth`, `.ckpt`, `.bin`: original research checkpoints) into burn modules.
//!
//! burn-store does the heavy lifting: [`SafetensorsStore`] memory-maps each file and reads
//! tensors lazily, [`PyTorchToBurnAdapter`] converts the PyTorch layout (linear weights
//! `[out, in]` -> `[in, out]`, norm `weight`/`bias` -> `gamma`/`beta`). This file adds what a
//! user-facing loader needs on top:
//! - several files (sharded checkpoints) applied as one set, with a key seen twice an error;
//! - fp16/bf16/fp32/fp64 files all cast to the float type the module's device uses;
//! - rank-0 tensors (`logit_scale`) accepted for burn's rank-1 `[1]` parameters;
//! - key remaps and ignore patterns ([`LoadOptions`]), kept per model family in that family's
//!   file, so a checkpoint quirk is decided in one place;
//! - fused tensors split into several module parameters ([`KeySplit`]: OpenCLIP's
//!   `in_proj_weight` as `q_proj`/`k_proj`/`v_proj`);
//! - a [`LoadReport`] of missing/unexpected keys and errors that name file and tensor.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_store::{
    ApplyError, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore, TensorSnapshot, TensorSnapshotError,
};
use regex::Regex;

use super::LoadError;

/// How many keys an error message lists before saying "...".
const KEYS_IN_MESSAGE: usize = 8;

/// What to do when keys do not line up between the files and the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Fail with [`LoadError::MissingKeys`] / [`LoadError::UnexpectedKeys`].
    Error,
    /// Load anyway, log a warning, list the keys in the [`LoadReport`].
    Warn,
    /// Load anyway, only list the keys in the [`LoadReport`].
    Allow,
}

/// A key rename applied to every key of the files before matching: `pattern` is a regex,
/// `replacement` may use `$1`-style groups (the `regex` crate's syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRemap {
    /// Regex matched against the file's key.
    pub pattern: String,
    /// Replacement for the matched part.
    pub replacement: String,
}

impl KeyRemap {
    /// A remap from a regex and its replacement.
    pub fn new(pattern: impl Into<String>, replacement: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            replacement: replacement.into(),
        }
    }
}

/// One file tensor loaded as several module parameters: a (remapped) key matching `pattern`
/// is cut along dim 0 into `parts.len()` equal pieces, piece `i` named by `parts[i]` (a
/// replacement for the whole key, `$1`-style groups allowed). E.g. `nn.MultiheadAttention`'s
/// fused `in_proj_weight` `[3d, d]` (rows: query, key, value) as three `[d, d]` projections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySplit {
    /// Regex matched against the whole remapped key.
    pub pattern: String,
    /// The pieces' keys, in order along dim 0.
    pub parts: Vec<String>,
}

/// Options of [`load_safetensors_with`]. The default is strict on missing keys and warns on
/// unexpected ones.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Module parameters that no file provides. Default: [`KeyPolicy::Error`]; a missing key
    /// otherwise leaves a random-initialised parameter behind, which is never what a user wants.
    pub missing: KeyPolicy,
    /// File tensors that the module has no place for. Default: [`KeyPolicy::Warn`]; loading one
    /// tower of a full `CLIPModel` file legitimately leaves the other tower unused.
    pub unexpected: KeyPolicy,
    /// Key renames, applied in order (each to the result of the previous one).
    pub remaps: Vec<KeyRemap>,
    /// Regexes of file keys that are known to have no module counterpart (e.g. the
    /// `position_ids` buffers older transformers versions saved); dropped before matching and
    /// listed in [`LoadReport::ignored`].
    pub ignore: Vec<String>,
    /// Regexes of (remapped) keys whose `[out, in, 1, 1]` tensors load as `[out, in]`: a 1x1
    /// convolution stored where the module has a linear layer (LDM's VAE attention).
    pub squeeze_1x1: Vec<String>,
    /// Fused tensors loaded as several parameters, applied to the remapped keys (before
    /// `squeeze_1x1`, which then sees the pieces' keys).
    pub splits: Vec<KeySplit>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            missing: KeyPolicy::Error,
            unexpected: KeyPolicy::Warn,
            remaps: Vec::new(),
            ignore: Vec::new(),
            squeeze_1x1: Vec::new(),
            splits: Vec::new(),
        }
    }
}

impl LoadOptions {
    /// Set the policy for missing keys.
    pub fn with_missing(mut self, policy: KeyPolicy) -> Self {
        self.missing = policy;
        self
    }

    /// Set the policy for unexpected keys.
    pub fn with_unexpected(mut self, policy: KeyPolicy) -> Self {
        self.unexpected = policy;
        self
    }

    /// Add a key remap (regex, replacement).
    pub fn with_remap(
        mut self,
        pattern: impl Into<String>,
        replacement: impl Into<String>,
    ) -> Self {
        self.remaps.push(KeyRemap::new(pattern, replacement));
        self
    }

    /// Add a regex of (remapped) keys whose 1x1-convolution weights load as linear ones.
    pub fn with_squeeze_1x1(mut self, pattern: impl Into<String>) -> Self {
        self.squeeze_1x1.push(pattern.into());
        self
    }

    /// Split (remapped) keys matching `pattern` along dim 0 into equal pieces named `parts`
    /// (see [`KeySplit`]).
    pub fn with_split<S: Into<String>>(
        mut self,
        pattern: impl Into<String>,
        parts: impl IntoIterator<Item = S>,
    ) -> Self {
        self.splits.push(KeySplit {
            pattern: pattern.into(),
            parts: parts.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// Add a regex of file keys to drop before matching.
    pub fn with_ignore(mut self, pattern: impl Into<String>) -> Self {
        self.ignore.push(pattern.into());
        self
    }
}

/// What a load did. Missing and unexpected keys are always listed here, whatever the policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// The files that were read, in order.
    pub files: Vec<PathBuf>,
    /// Number of module parameters that received a tensor.
    pub applied: usize,
    /// Module parameters no file provided (checkpoint naming: `weight`/`bias` for norms).
    pub missing: Vec<String>,
    /// File keys (after remapping) the module has no parameter for.
    pub unexpected: Vec<String>,
    /// File keys dropped by [`LoadOptions::ignore`].
    pub ignored: Vec<String>,
    /// File keys that were renamed, as `(file key, module key)`.
    pub remapped: Vec<(String, String)>,
    /// Storage dtypes met in the files that were cast to the module's float type.
    pub cast_from: Vec<DType>,
}

impl LoadReport {
    /// True when every parameter was loaded and every tensor was used.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// Load `*.safetensors` files (or torch pickles, see [`is_torch_pickle`]) into `module` with the
/// default [`LoadOptions`] (missing keys are an error, unexpected keys a warning). PyTorch
/// layout is converted, any float storage type is cast to the float type of `device`.
///
/// The module is usually built from its `config.json` first; its lazily initialised
/// parameters are then filled without ever allocating random weights.
///
/// ```no_run
/// use std::path::PathBuf;
/// use burn::backend::NdArray;
/// use burn::nn::LinearConfig;
/// use rewardsds_engine::weights::load_safetensors;
///
/// let device = Default::default();
/// let module = LinearConfig::new(4, 2).init::<NdArray>(&device);
/// let files = [PathBuf::from("model.safetensors")];
/// let (module, report) = load_safetensors(module, &files, &device)?;
/// assert!(report.is_exact());
/// # let _ = module;
/// # Ok::<(), rewardsds_engine::weights::LoadError>(())
/// ```
pub fn load_safetensors<B: Backend, M: Module<B>>(
    module: M,
    files: &[PathBuf],
    device: &B::Device,
) -> Result<(M, LoadReport), LoadError> {
    load_safetensors_with(module, files, device, &LoadOptions::default())
}

/// [`load_safetensors`] with explicit [`LoadOptions`] (remaps, ignore list, key policies).
pub fn load_safetensors_with<B: Backend, M: Module<B>>(
    mut module: M,
    files: &[PathBuf],
    device: &B::Device,
    options: &LoadOptions,
) -> Result<(M, LoadReport), LoadError> {
    if super::random_init() {
        return Ok((module, LoadReport::default()));
    }
    if files.is_empty() {
        return Err(LoadError::NoWeights {
            path: PathBuf::from("(no files given)"),
            hint: None,
        });
    }
    let remaps: Vec<(Regex, &str)> = options
        .remaps
        .iter()
        .map(|r| (compile(&r.pattern), r.replacement.as_str()))
        .collect();
    let ignore: Vec<Regex> = options.ignore.iter().map(|p| compile(p)).collect();
    let squeeze: Vec<Regex> = options.squeeze_1x1.iter().map(|p| compile(p)).collect();
    let splits: Vec<(Regex, &[String])> = options
        .splits
        .iter()
        .map(|s| (compile(&format!("^(?:{})$", s.pattern)), s.parts.as_slice()))
        .collect();

    let mut report = LoadReport {
        files: files.to_vec(),
        ..Default::default()
    };
    // Module key -> (file, key in the file, shape in the file): to name the culprit in errors.
    let mut origin: HashMap<String, (PathBuf, String, Vec<usize>)> = HashMap::new();
    let mut snapshots = Vec::new();
    for file in files {
        for (file_key, snapshot) in read_snapshots(file)? {
            if ignore.iter().any(|re| re.is_match(&file_key)) {
                report.ignored.push(file_key);
                continue;
            }
            let mut key = file_key.clone();
            for (re, replacement) in &remaps {
                key = re.replace_all(&key, *replacement).into_owned();
            }
            if snapshot.dtype.is_float() && !report.cast_from.contains(&snapshot.dtype) {
                report.cast_from.push(snapshot.dtype);
            }
            // (module key, the file's tensor or piece of it, how to name it in errors)
            let pieces = match splits.iter().find(|(re, _)| re.is_match(&key)) {
                Some((re, parts)) => split(file, &file_key, &snapshot, &key, re, parts)?,
                None => vec![(key.clone(), snapshot, file_key.clone())],
            };
            for (key, snapshot, source) in pieces {
                if let Some((first, _, _)) = origin.get(&key) {
                    return Err(LoadError::DuplicateKey {
                        tensor: key,
                        first: first.clone(),
                        second: file.clone(),
                    });
                }
                if key != file_key {
                    report.remapped.push((file_key.clone(), key.clone()));
                }
                origin.insert(key.clone(), (file.clone(), source, snapshot.shape.to_vec()));
                let snapshot = renamed(&snapshot, &key);
                let snapshot = match snapshot.shape.as_slice() {
                    &[out, input, 1, 1] if squeeze.iter().any(|re| re.is_match(&key)) => {
                        squeezed(&snapshot, [out, input])
                    }
                    _ => snapshot,
                };
                snapshots.push(snapshot);
            }
        }
    }

    // The dtype new float tensors get on this device: what every stored float is cast to.
    let target = Tensor::<B, 1>::zeros([1], device).dtype();
    report.cast_from.retain(|d| *d != target);
    let adapter = PyTorchToBurnAdapter.chain(CastAdapter { target });
    let result = module.apply(snapshots, None, Some(Box::new(adapter)), false);

    report.applied = result.applied.len();
    report.missing = result
        .missing
        .iter()
        .map(|(path, containers)| checkpoint_name(path, containers))
        .collect();
    // burn-store finds a norm's `gamma` under the file's `weight` but still lists the file
    // key as unused; those were loaded, so they are not unexpected.
    let applied: HashSet<&str> = result.applied.iter().map(String::as_str).collect();
    report.unexpected = result
        .unused
        .iter()
        .filter(|key| !loaded_as_norm_param(key, &applied))
        .cloned()
        .collect();
    let file_list = || {
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Missing keys first: a checkpoint of another model also mismatches shapes, and the keys
    // say more about what went wrong than the first odd shape does.
    check_keys(options.missing, &report.missing, "missing", || {
        LoadError::MissingKeys {
            files: file_list(),
            count: report.missing.len(),
            first: first_keys(&report.missing),
            unexpected: first_keys(&report.unexpected),
        }
    })?;
    if let Some(error) = result.errors.first() {
        return Err(apply_error(error, &origin));
    }
    check_keys(options.unexpected, &report.unexpected, "unexpected", || {
        LoadError::UnexpectedKeys {
            files: file_list(),
            count: report.unexpected.len(),
            first: first_keys(&report.unexpected),
        }
    })?;
    Ok((module, report))
}

/// Every tensor's shape in one weights file (safetensors: from its header; torch pickle: from
/// its pickle), without reading tensor data.
pub fn tensor_shapes(file: &Path) -> Result<BTreeMap<String, Vec<usize>>, LoadError> {
    Ok(read_snapshots(file)?
        .into_iter()
        .map(|(key, snapshot)| (key, snapshot.shape.to_vec()))
        .collect())
}

/// Every tensor of one file, keyed by its name in the file.
fn read_snapshots(file: &Path) -> Result<Vec<(String, TensorSnapshot)>, LoadError> {
    match std::fs::metadata(file) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(LoadError::MissingFile {
                path: file.to_path_buf(),
                hint: Some("it is a folder, not a weights file".into()),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::MissingFile {
                path: file.to_path_buf(),
                hint: None,
            });
        }
        Err(source) => {
            return Err(LoadError::Io {
                path: file.to_path_buf(),
                source,
            });
        }
    }
    let corrupt = |reason: String| LoadError::CorruptFile {
        path: file.to_path_buf(),
        reason,
    };
    if is_torch_pickle(file) {
        // Original research checkpoints (MVDream's `.pt`, ImageReward's `.pt`) are torch
        // pickles; burn-store reads their tensors lazily without Python.
        // Keys as written: burn-store would otherwise renumber `nn.Sequential` indices
        // (`time_embed.2` -> `time_embed.1`) for burn's own layouts.
        let mut store = PytorchStore::from_file(file).map_indices_contiguous(false);
        let all = store.get_all_snapshots().map_err(|e| {
            // torch.save's default format is a zip archive, whose index sits at the end: a cut
            // download fails to open as zip and then as a legacy pickle, which says little.
            let zip = std::fs::File::open(file).ok().and_then(|mut f| {
                let mut magic = [0u8; 4];
                std::io::Read::read_exact(&mut f, &mut magic).ok()?;
                Some(magic == *b"PK\x03\x04")
            });
            if zip == Some(true) {
                corrupt(format!(
                    "a zip-format torch checkpoint whose archive cannot be read: truncated or \
                     damaged (an interrupted download?); the reader said: {e}"
                ))
            } else {
                corrupt(format!("not a readable torch checkpoint: {e}"))
            }
        })?;
        return Ok(all.iter().map(|(k, s)| (k.clone(), s.clone())).collect());
    }
    let mut store = SafetensorsStore::from_file(file);
    let all = store
        .get_all_snapshots()
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(all.iter().map(|(k, s)| (k.clone(), s.clone())).collect())
}

/// Whether `file` is a torch pickle (`torch.save`) by its extension; anything else is read as
/// safetensors.
pub fn is_torch_pickle(file: &Path) -> bool {
    file.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["pt", "pth", "ckpt", "bin"]
            .iter()
            .any(|known| e.eq_ignore_ascii_case(known))
    })
}

/// The same lazy tensor under another key.
fn renamed(snapshot: &TensorSnapshot, key: &str) -> TensorSnapshot {
    TensorSnapshot::from_closure(
        snapshot.clone_data_fn(),
        snapshot.dtype,
        snapshot.shape.clone(),
        key.split('.').map(str::to_string).collect(),
        Vec::new(),
        ParamId::new(),
    )
}

/// The same lazy tensor with its trailing 1x1 dimensions dropped (row-major data unchanged).
fn squeezed(snapshot: &TensorSnapshot, shape: [usize; 2]) -> TensorSnapshot {
    let data = snapshot.clone_data_fn();
    TensorSnapshot::from_closure(
        Rc::new(move || {
            let mut tensor = data()?;
            tensor.shape = Shape::from(shape.to_vec());
            Ok(tensor)
        }),
        snapshot.dtype,
        Shape::from(shape.to_vec()),
        snapshot
            .full_path()
            .split('.')
            .map(str::to_string)
            .collect(),
        Vec::new(),
        ParamId::new(),
    )
}

/// The pieces of a [`KeySplit`]: `(module key, lazy piece, the piece's name for errors)`.
/// Each piece reads its rows of the file tensor when loaded; the pieces share one read of it
/// (the tensor is read once and dropped once every piece has taken its rows).
fn split(
    file: &Path,
    file_key: &str,
    snapshot: &TensorSnapshot,
    key: &str,
    pattern: &Regex,
    parts: &[String],
) -> Result<Vec<(String, TensorSnapshot, String)>, LoadError> {
    let shape = snapshot.shape.to_vec();
    let names: Vec<String> = parts
        .iter()
        .map(|part| pattern.replace(key, part.as_str()).into_owned())
        .collect();
    let n = names.len();
    let rows = shape.first().copied().unwrap_or(0);
    if n == 0 || rows == 0 || rows % n != 0 {
        return Err(LoadError::CorruptTensor {
            path: file.to_path_buf(),
            tensor: file_key.to_string(),
            reason: format!(
                "shape {shape:?} does not split along dim 0 into {n} equal parts ({})",
                names.join(", ")
            ),
        });
    }
    let step = rows / n;
    let mut piece_shape = shape.clone();
    piece_shape[0] = step;
    let source = Rc::new(SplitSource {
        data: snapshot.clone_data_fn(),
        cached: RefCell::new(None),
        pending: Cell::new(n),
    });
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let source = source.clone();
            let shape = piece_shape.clone();
            let data_fn = Rc::new(move || source.rows(i * step..(i + 1) * step, &shape));
            let piece = TensorSnapshot::from_closure(
                data_fn,
                snapshot.dtype,
                Shape::from(piece_shape.clone()),
                name.split('.').map(str::to_string).collect(),
                Vec::new(),
                ParamId::new(),
            );
            let what = format!(
                "{file_key} (rows {}..{} of {rows})",
                i * step,
                (i + 1) * step
            );
            (name, piece, what)
        })
        .collect())
}

/// A file tensor shared by the pieces of a [`KeySplit`].
struct SplitSource {
    data: Rc<dyn Fn() -> Result<TensorData, TensorSnapshotError>>,
    /// The whole tensor while pieces that have not been read yet remain.
    cached: RefCell<Option<TensorData>>,
    /// Pieces not read yet.
    pending: Cell<usize>,
}

impl SplitSource {
    /// Rows `rows` (dim 0) of the tensor, as a tensor of `shape`.
    fn rows(
        &self,
        rows: std::ops::Range<usize>,
        shape: &[usize],
    ) -> Result<TensorData, TensorSnapshotError> {
        let whole = match self.cached.borrow_mut().take() {
            Some(data) => data,
            None => (self.data)()?,
        };
        let total = whole.shape.first().copied().unwrap_or(0);
        let bytes = whole.as_bytes();
        if total == 0 || bytes.len() % total != 0 {
            return Err(TensorSnapshotError::DataError(format!(
                "{} bytes do not divide into {total} rows",
                bytes.len()
            )));
        }
        let row = bytes.len() / total;
        let piece = TensorData::from_bytes_vec(
            bytes[rows.start * row..rows.end * row].to_vec(),
            shape.to_vec(),
            whole.dtype,
        );
        // A piece may be read again (it then reads the file again); the pieces still pending
        // keep the whole tensor so that it is read from the file once.
        let pending = self.pending.get().saturating_sub(1);
        self.pending.set(pending);
        if pending > 0 {
            *self.cached.borrow_mut() = Some(whole);
        }
        Ok(piece)
    }
}

fn compile(pattern: &str) -> Regex {
    // Remap and ignore patterns are written in code, next to the model they serve: a bad one
    // is a programmer error.
    Regex::new(pattern).unwrap_or_else(|e| panic!("invalid key regex `{pattern}`: {e}"))
}

fn first_keys(keys: &[String]) -> Vec<String> {
    keys.iter().take(KEYS_IN_MESSAGE).cloned().collect()
}

fn check_keys(
    policy: KeyPolicy,
    keys: &[String],
    what: &str,
    error: impl FnOnce() -> LoadError,
) -> Result<(), LoadError> {
    if keys.is_empty() {
        return Ok(());
    }
    match policy {
        KeyPolicy::Error => Err(error()),
        KeyPolicy::Warn => {
            log::warn!(
                "{} {what} tensor key(s) while loading weights, first: {}",
                keys.len(),
                first_keys(keys).join(", ")
            );
            Ok(())
        }
        KeyPolicy::Allow => Ok(()),
    }
}

/// A burn parameter path in checkpoint naming: norms' `gamma`/`beta` are `weight`/`bias` in
/// PyTorch files, which is what a user will search their file for.
fn checkpoint_name(path: &str, containers: &str) -> String {
    let norm = ["LayerNorm", "GroupNorm", "BatchNorm"]
        .iter()
        .any(|n| containers.ends_with(&format!("Struct:{n}")));
    match path.rsplit_once('.') {
        Some((parent, "gamma")) if norm => format!("{parent}.weight"),
        Some((parent, "beta")) if norm => format!("{parent}.bias"),
        _ if norm && path == "gamma" => "weight".into(),
        _ if norm && path == "beta" => "bias".into(),
        _ => path.to_string(),
    }
}

/// Whether a file key `x.weight`/`x.bias` was applied to a norm's `x.gamma`/`x.beta`.
fn loaded_as_norm_param(key: &str, applied: &HashSet<&str>) -> bool {
    let burn_name = match key.rsplit_once('.') {
        Some((parent, "weight")) => format!("{parent}.gamma"),
        Some((parent, "bias")) => format!("{parent}.beta"),
        None if key == "weight" => "gamma".into(),
        None if key == "bias" => "beta".into(),
        _ => return false,
    };
    applied.contains(burn_name.as_str())
}

/// Turn burn-store's apply error into one that names the file and the key in it.
fn apply_error(
    error: &ApplyError,
    origin: &HashMap<String, (PathBuf, String, Vec<usize>)>,
) -> LoadError {
    let (path, message) = match error {
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => {
            let Some((file, key, file_shape)) = lookup(origin, path) else {
                return corrupt_unknown(path, &format!("expected {expected:?}, found {found:?}"));
            };
            let mut expected = expected.to_vec();
            // A linear weight was transposed on the way; state both shapes in the file's layout.
            if file_shape.as_slice() != found.as_slice() && expected.len() == 2 {
                expected.reverse();
            }
            return LoadError::ShapeMismatch {
                path: file.clone(),
                tensor: key.clone(),
                expected,
                found: file_shape.clone(),
            };
        }
        ApplyError::DTypeMismatch {
            path,
            expected,
            found,
        } => (path, format!("dtype {found:?}, expected {expected:?}")),
        ApplyError::AdapterError { path, message } => (path, message.clone()),
        ApplyError::LoadError { path, message } => (path, message.clone()),
    };
    match lookup(origin, path) {
        Some((file, key, _)) => LoadError::CorruptTensor {
            path: file.clone(),
            tensor: key.clone(),
            reason: message,
        },
        None => corrupt_unknown(path, &message),
    }
}

/// The origin of a burn path, also under its checkpoint name (norm `gamma` <- `weight`).
fn lookup<'a>(
    origin: &'a HashMap<String, (PathBuf, String, Vec<usize>)>,
    path: &str,
) -> Option<&'a (PathBuf, String, Vec<usize>)> {
    origin.get(path).or_else(|| {
        let (parent, last) = path.rsplit_once('.')?;
        let alt = match last {
            "gamma" => "weight",
            "beta" => "bias",
            _ => return None,
        };
        origin.get(&format!("{parent}.{alt}"))
    })
}

fn corrupt_unknown(path: &str, message: &str) -> LoadError {
    LoadError::CorruptTensor {
        path: PathBuf::from("(unknown file)"),
        tensor: path.to_string(),
        reason: message.to_string(),
    }
}

/// Casts stored floats (fp16, bf16, fp64, fp32) to the module's float type and gives rank-0
/// tensors (`logit_scale`) the `[1]` shape burn parameters have.
#[derive(Debug, Clone)]
struct CastAdapter {
    target: DType,
}

impl ModuleAdapter for CastAdapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let cast = snapshot.dtype.is_float() && snapshot.dtype != self.target;
        let scalar = snapshot.shape.num_dims() == 0;
        if !cast && !scalar {
            return snapshot.clone();
        }
        let inner = snapshot.clone_data_fn();
        let target = self.target;
        let data_fn = Rc::new(move || {
            let mut data = inner()?;
            if cast && data.dtype != target {
                data = data.convert_dtype(target);
            }
            if scalar {
                data.shape = Shape::new([1]);
            }
            Ok(data)
        });
        TensorSnapshot::from_closure(
            data_fn,
            if cast { target } else { snapshot.dtype },
            if scalar {
                Shape::new([1])
            } else {
                snapshot.shape.clone()
            },
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::nn::{Linear, LinearConfig};

    type B = NdArray<f32>;

    /// Three projections that a checkpoint stores fused.
    #[derive(Module, Debug)]
    struct Projections<B: Backend> {
        q_proj: Linear<B>,
        k_proj: Linear<B>,
        v_proj: Linear<B>,
    }

    fn projections<BK: Backend>(device: &BK::Device) -> Projections<BK> {
        let linear = || LinearConfig::new(2, 2).init(device);
        Projections {
            q_proj: linear(),
            k_proj: linear(),
            v_proj: linear(),
        }
    }

    /// A safetensors file with `in_proj_weight` (`rows x 2`, f32, value `10 * row + column`) and
    /// `in_proj_bias` (`rows`, f16, value `row`), both under `attn.`.
    fn fused_file(dir: &Path, rows: usize) -> PathBuf {
        let weight: Vec<u8> = (0..rows * 2)
            .flat_map(|i| ((10 * (i / 2) + i % 2) as f32).to_le_bytes())
            .collect();
        let bias: Vec<u8> = (0..rows)
            .flat_map(|i| burn::tensor::f16::from_f32(i as f32).to_le_bytes())
            .collect();
        fn view(
            dtype: safetensors::Dtype,
            shape: Vec<usize>,
            data: &[u8],
        ) -> safetensors::tensor::TensorView<'_> {
            safetensors::tensor::TensorView::new(dtype, shape, data).unwrap()
        }
        let tensors = vec![
            (
                "attn.in_proj_weight",
                view(safetensors::Dtype::F32, vec![rows, 2], &weight),
            ),
            (
                "attn.in_proj_bias",
                view(safetensors::Dtype::F16, vec![rows], &bias),
            ),
        ];
        let file = dir.join("fused.safetensors");
        safetensors::serialize_to_file(tensors, None, &file).unwrap();
        file
    }

    fn split_options() -> LoadOptions {
        LoadOptions::default()
            .with_unexpected(KeyPolicy::Error)
            .with_remap(r"^attn\.", "")
            .with_split(
                r"in_proj_(weight|bias)",
                ["q_proj.${1}", "k_proj.${1}", "v_proj.${1}"],
            )
    }

    #[test]
    fn a_fused_tensor_loads_as_its_row_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let file = fused_file(dir.path(), 6);
        let device = Default::default();
        let (module, report) = load_safetensors_with(
            projections::<B>(&device),
            &[file],
            &device,
            &split_options(),
        )
        .unwrap();
        assert!(report.is_exact(), "{report:?}");
        assert_eq!(report.applied, 6);
        assert!(
            report
                .remapped
                .contains(&("attn.in_proj_weight".into(), "k_proj.weight".into()))
        );
        for (i, linear) in [&module.q_proj, &module.k_proj, &module.v_proj]
            .into_iter()
            .enumerate()
        {
            // PyTorch [out, in] rows 2i, 2i + 1 -> burn's [in, out].
            let weight = linear.weight.val().into_data().to_vec::<f32>().unwrap();
            let r = (2 * i) as f32;
            assert_eq!(
                weight,
                [
                    10.0 * r,
                    10.0 * (r + 1.0),
                    10.0 * r + 1.0,
                    10.0 * (r + 1.0) + 1.0
                ],
                "part {i}"
            );
            let bias = linear.bias.as_ref().unwrap().val();
            assert_eq!(bias.into_data().to_vec::<f32>().unwrap(), [r, r + 1.0]);
        }
    }

    /// The error of loading a fused projection of `rows` rows split in 3.
    fn split_error(rows: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = fused_file(dir.path(), rows);
        let device = Default::default();
        load_safetensors_with(
            projections::<B>(&device),
            &[file],
            &device,
            &split_options(),
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn a_tensor_that_does_not_split_evenly_is_named() {
        let err = split_error(5);
        assert!(err.contains("attn.in_proj_"), "{err}");
        assert!(err.contains("3 equal parts"), "{err}");
        assert!(err.contains("k_proj."), "{err}");
    }

    #[test]
    fn a_split_piece_of_the_wrong_shape_names_the_rows() {
        // 9 rows split in 3 give [3, 2] pieces where the module has [2, 2].
        let err = split_error(9);
        assert!(err.contains("attn.in_proj_"), "{err}");
        assert!(err.contains("rows"), "{err}");
    }
}
