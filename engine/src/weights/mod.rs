//! Finding model folders and loading safetensors into burn modules.
//!
//! - [`resolve`]: a model name (folder, preset, `org/name`) to a folder; the files in it.
//! - `hub` (cargo feature `hub`): downloads into the Hugging Face cache that hold up to cuts
//!   and stalls.
//! - [`load`]: `*.safetensors` into a burn module, PyTorch layout converted, any float type.
//! - [`save`]: a burn module to `*.safetensors` with the same key names (what we train).
//! - [`LoadError`]: every failure, naming the file or tensor at fault.
//! - [`set_random_init_for_benchmarks`]: models from their configs alone, for benchmarks.
//!
//! Key remaps live with each model family (e.g. [`crate::models::clip`]), not here.

mod error;
#[cfg(feature = "hub")]
pub mod hub;
pub mod load;
mod random_init;
pub mod resolve;
pub mod save;

pub use error::LoadError;
pub use load::{
    KeyPolicy, KeyRemap, LoadOptions, LoadReport, is_torch_pickle, load_safetensors,
    load_safetensors_with, tensor_shapes,
};
pub use random_init::{random_init, set_random_init_for_benchmarks};
pub use resolve::{
    Companion, Fetch, PRESETS, Preset, bundled_models_dir, cached_repo, companion_file,
    component_dir, hf_hub_cache, preset, read_json, resolve_model, resolve_model_in, weight_files,
};
pub use save::save_safetensors;
