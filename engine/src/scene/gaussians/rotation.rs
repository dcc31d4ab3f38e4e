//! A Gaussian's rotation: the stored quaternion (w, x, y, z), not kept at unit length while
//! it is optimised, normalised and turned into a matrix on the host (projection, densify).

/// The unit quaternion of `q` (`[w, x, y, z]`), the rotation matrix it stands for, and the
/// norm `q` was divided by (at least 1e-12).
pub fn unit_rotation(q: &[f32]) -> ([f32; 4], [[f32; 3]; 3], f32) {
    let norm = q.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    let unit = [q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm];
    (unit, rotation_matrix(unit), norm)
}

/// Rotation matrix of a unit quaternion `[w, x, y, z]`.
pub fn rotation_matrix(q: [f32; 4]) -> [[f32; 3]; 3] {
    let [w, x, y, z] = q;
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}
