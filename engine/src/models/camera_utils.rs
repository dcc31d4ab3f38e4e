//! MVDream's camera input (bytedance/MVDream `mvdream/camera_utils.py`): the flattened 4x4
//! camera-to-world matrix, row-major, in the frame MVDream was trained with, translation
//! normalised to unit length.
//!
//! MVDream builds its cameras in a Y-up OpenGL frame with azimuth 0 on +Z, growing towards +X,
//! which is exactly our scene frame ([`crate::scene::camera`]), then turns the world to Blender's
//! Z-up axes (`convert_opengl_to_blender`: y -> z, z -> -y) before feeding the network. So one
//! of our [`Camera`]s maps to MVDream's input by that same turn and the normalisation
//! ([`mvdream_camera`]); [`get_camera`] reproduces the reference function for tests and demos.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use glam::DMat4;

use crate::scene::Camera;

/// Width of MVDream's camera input (a flattened 4x4 matrix).
pub const CAMERA_DIM: usize = 16;

/// Blender's Z-up world from the Y-up OpenGL one (`convert_opengl_to_blender`'s `flip_yz`),
/// applied on the left of a camera-to-world matrix.
fn opengl_to_blender() -> DMat4 {
    // Rows (1,0,0,0), (0,0,-1,0), (0,1,0,0), (0,0,0,1), given here as columns.
    DMat4::from_cols_array(&[
        1.0, 0.0, 0.0, 0.0, //
        0.0, 0.0, 1.0, 0.0, //
        0.0, -1.0, 0.0, 0.0, //
        0.0, 0.0, 0.0, 1.0,
    ])
}

/// `create_camera_to_world_matrix`: a camera on the unit sphere at `elevation_deg` /
/// `azimuth_deg` looking at the origin, Y up, OpenGL axes.
pub fn create_camera_to_world_matrix(elevation_deg: f64, azimuth_deg: f64) -> DMat4 {
    let (el, az) = (elevation_deg.to_radians(), azimuth_deg.to_radians());
    let position = glam::DVec3::new(el.cos() * az.sin(), el.sin(), el.cos() * az.cos());
    let forward = (-position).normalize();
    let right = forward.cross(glam::DVec3::Y).normalize();
    let up = right.cross(forward).normalize();
    DMat4::from_cols(
        right.extend(0.0),
        up.extend(0.0),
        (-forward).extend(0.0),
        position.extend(1.0),
    )
}

/// `normalize_camera`: the translation scaled to unit length (plus 1e-8, as the reference).
pub fn normalize_camera(c2w: DMat4) -> DMat4 {
    let mut out = c2w;
    let t = c2w.w_axis.truncate();
    out.w_axis = (t / (t.length() + 1e-8)).extend(c2w.w_axis.w);
    out
}

/// Row-major flattening (numpy's `.flatten()` of the 4x4 matrix), in f32 like the reference's
/// final `.float()`.
pub fn flatten(c2w: DMat4) -> [f32; CAMERA_DIM] {
    c2w.transpose().to_cols_array().map(|v| v as f32)
}

/// `get_camera`: `num_frames` cameras at one elevation, azimuths `azimuth_start +
/// k * azimuth_span / num_frames`, in Blender axes unless `blender_coord` is false.
pub fn get_camera(
    num_frames: usize,
    elevation_deg: f64,
    azimuth_start_deg: f64,
    azimuth_span_deg: f64,
    blender_coord: bool,
) -> Vec<[f32; CAMERA_DIM]> {
    let gap = azimuth_span_deg / num_frames as f64;
    (0..num_frames)
        .map(|k| {
            let c2w =
                create_camera_to_world_matrix(elevation_deg, azimuth_start_deg + k as f64 * gap);
            flatten(if blender_coord {
                opengl_to_blender() * c2w
            } else {
                c2w
            })
        })
        .collect()
}

/// The camera input MVDream expects for one of our cameras: its camera-to-world matrix turned
/// to Blender axes, translation normalised, flattened row-major. For an orbit camera at
/// azimuth `a` and elevation `e` this equals `get_camera` at `a`, `e` whatever the distance.
pub fn mvdream_camera(camera: &Camera) -> [f32; CAMERA_DIM] {
    let c2w = camera.camera_to_world().as_dmat4();
    flatten(normalize_camera(opengl_to_blender() * c2w))
}

/// [`mvdream_camera`] of each camera as a `[n, 16]` tensor (the UNet's `class_labels`).
pub fn mvdream_cameras<B: Backend>(cameras: &[Camera], device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = cameras.iter().flat_map(mvdream_camera).collect();
    Tensor::from_data(TensorData::new(values, [cameras.len(), CAMERA_DIM]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orbit_camera_maps_to_the_reference_pose_whatever_its_distance() {
        for (az, el) in [
            (0.0f32, 15.0f32),
            (45.0, 30.0),
            (135.0, -10.0),
            (300.0, 60.0),
        ] {
            let reference = get_camera(1, el as f64, az as f64, 360.0, true)[0];
            for distance in [0.5, 2.0, 3.7] {
                let camera = Camera::orbit(az, el, distance, 40.0, 8, 8).unwrap();
                let ours = mvdream_camera(&camera);
                for (a, b) in ours.iter().zip(reference) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "az {az} el {el}: {ours:?} vs {reference:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn blender_axes_put_the_up_vector_on_z() {
        // Row-major: element 4 * row + col. Column 1 is the camera's up, column 3 its position.
        let c = get_camera(1, 0.0, 0.0, 360.0, true)[0];
        assert!((c[4 * 2 + 1] - 1.0).abs() < 1e-6, "up is +Z: {c:?}");
        // Azimuth 0 sits on -Y in Blender axes (+Z in ours).
        assert!((c[4 + 3] + 1.0).abs() < 1e-6, "position on -Y: {c:?}");
    }
}
