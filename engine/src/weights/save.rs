//! Writing a burn module as a `*.safetensors` file with diffusers/transformers key names, the
//! inverse of [`load_safetensors_with`](super::load_safetensors_with): enum variant names
//! left out of the paths, linear weights transposed to PyTorch's `[out, in]`, norm
//! `gamma`/`beta` renamed `weight`/`bias`. Used to ship the models we train (Tiny World) in
//! the same layout as the models we download.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::LoadError;

/// Save `module`'s parameters to `path` with float tensors stored as `dtype` (`F16` or
/// `F32`), with `metadata` in the header. Written to a temporary file first and renamed, so
/// readers never see a partial file.
pub fn save_safetensors<B: Backend, M: Module<B>>(
    module: &M,
    path: &Path,
    dtype: DType,
    metadata: HashMap<String, String>,
) -> Result<(), LoadError> {
    let (st_dtype, dtype) = match dtype {
        DType::F16 => (Dtype::F16, DType::F16),
        DType::F32 => (Dtype::F32, DType::F32),
        other => {
            return Err(LoadError::CorruptFile {
                path: path.to_path_buf(),
                reason: format!("saving as {other:?} is not supported (F16 or F32)"),
            });
        }
    };
    let snapshots = module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true);
    let mut tensors = Vec::with_capacity(snapshots.len());
    for snapshot in snapshots {
        let name = snapshot.full_path();
        let data = snapshot.to_data().map_err(|e| LoadError::CorruptTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason: format!("{e:?}"),
        })?;
        let shape = data.shape.clone();
        let bytes = data.convert_dtype(dtype).into_bytes().to_vec();
        tensors.push((name, shape, bytes));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(st_dtype, shape.to_vec(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| LoadError::CorruptTensor {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tmp = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        LoadError::CorruptFile {
            path: path.to_path_buf(),
            reason: format!("writing: {e}"),
        }
    })?;
    std::fs::rename(&tmp, path).map_err(|e| LoadError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}
