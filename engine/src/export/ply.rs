//! Gaussian splat clouds as the 3DGS `.ply` layout (binary little-endian): what splat viewers
//! and engines (SuperSplat, brush, Unity/Unreal splat plugins) read. Hand-written: the format
//! is a header and a flat float table, and no PLY crate writes 3DGS's property names.

use std::path::Path;

use super::{ExportError, write_atomic};
use crate::scene::gaussians::SplatCloud;

/// The `.ply` file's bytes: position, zero normal, `f_dc_*`, `f_rest_*` (channel-major, as
/// 3DGS stores them), opacity logit, log-scales, rotation `(w, x, y, z)`.
pub fn splat_ply_bytes(cloud: &SplatCloud) -> Vec<u8> {
    let coeffs = cloud.sh.first().map_or(3, Vec::len) / 3; // per channel
    let rest = coeffs.saturating_sub(1);
    let mut names: Vec<String> = [
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.extend((0..3 * rest).map(|i| format!("f_rest_{i}")));
    names.push("opacity".into());
    names.extend((0..3).map(|i| format!("scale_{i}")));
    names.extend((0..4).map(|i| format!("rot_{i}")));
    let mut header = format!(
        "ply\nformat binary_little_endian 1.0\nelement vertex {}\n",
        cloud.len()
    );
    for name in &names {
        header.push_str(&format!("property float {name}\n"));
    }
    header.push_str("end_header\n");
    let mut bytes = header.into_bytes();
    bytes.reserve(cloud.len() * names.len() * 4);
    for i in 0..cloud.len() {
        let sh = &cloud.sh[i];
        let mut row: Vec<f32> = Vec::with_capacity(names.len());
        row.extend_from_slice(&cloud.positions[i]);
        row.extend_from_slice(&[0.0; 3]);
        row.extend_from_slice(&sh[0..3]);
        for c in 0..3 {
            row.extend((0..rest).map(|k| sh[3 * (k + 1) + c]));
        }
        let o = cloud.opacities[i].clamp(1e-6, 1.0 - 1e-6);
        row.push((o / (1.0 - o)).ln());
        row.extend(cloud.scales[i].iter().map(|s| s.max(1e-12).ln()));
        row.extend_from_slice(&cloud.rotations[i]);
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    bytes
}

/// Writes `cloud` to `path` atomically.
pub fn write_splat_ply(cloud: &SplatCloud, path: &Path) -> Result<(), ExportError> {
    write_atomic(path, &splat_ply_bytes(cloud))
}
