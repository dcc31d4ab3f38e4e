//! The live preview of a Gaussian scene as the Gaussians themselves: one quad per Gaussian,
//! projected and shaded by `shaders/splat_preview.wgsl` (EWA splatting as 3DGS does it) and
//! alpha-blended. Blending needs back-to-front order, which Bevy only gives per entity, so the
//! quads are re-sorted on the CPU when the camera has moved enough to change it.

use bevy::asset::{RenderAssetUsages, load_internal_asset, uuid_handle};
use bevy::camera::visibility::NoFrustumCulling;
use bevy::light::NotShadowCaster;
use bevy::mesh::{
    Indices, MeshVertexAttribute, MeshVertexBufferLayoutRef, PrimitiveTopology, VertexFormat,
};
use bevy::pbr::{MaterialPipeline, MaterialPipelineKey, MaterialPlugin};
use bevy::prelude::*;
use bevy::render::render_resource::{
    AsBindGroup, RenderPipelineDescriptor, SpecializedMeshPipelineError,
};
use bevy::shader::{Shader, ShaderRef};
use rewardsds_engine::mesh::srgb_to_linear;
use rewardsds_engine::scene::gaussians::SplatCloud;

/// The embedded splat shader.
pub const SPLAT_PREVIEW_SHADER: Handle<Shader> =
    uuid_handle!("6da78460-7565-4b3b-a509-bdba86fcdb85");

/// Which corner of its quad a vertex is: `(+-1, +-1)`.
pub const ATTRIBUTE_SPLAT_CORNER: MeshVertexAttribute = MeshVertexAttribute::new(
    "SplatCorner",
    0x7c0f_06d8_22f8_3d10,
    VertexFormat::Float32x2,
);
/// The Gaussian's covariance, first half of its upper triangle: `(xx, xy, xz)`.
pub const ATTRIBUTE_SPLAT_COV_A: MeshVertexAttribute =
    MeshVertexAttribute::new("SplatCovA", 0x5893_0841_2161_6671, VertexFormat::Float32x3);
/// The rest of it: `(yy, yz, zz)`.
pub const ATTRIBUTE_SPLAT_COV_B: MeshVertexAttribute =
    MeshVertexAttribute::new("SplatCovB", 0x555e_57f3_7bd8_1980, VertexFormat::Float32x3);

const CORNERS: [[f32; 2]; 4] = [[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]];

/// Draws splat meshes ([`splats_to_bevy_mesh`]).
#[derive(Asset, TypePath, AsBindGroup, Debug, Clone)]
pub struct SplatPreviewMaterial {
    /// x: size multiplier of every splat (1: as optimised), y: opacity multiplier.
    #[uniform(0)]
    pub params: Vec4,
}

impl Default for SplatPreviewMaterial {
    fn default() -> Self {
        Self {
            params: Vec4::new(1.0, 1.0, 0.0, 0.0),
        }
    }
}

impl Material for SplatPreviewMaterial {
    fn vertex_shader() -> ShaderRef {
        SPLAT_PREVIEW_SHADER.into()
    }

    fn fragment_shader() -> ShaderRef {
        SPLAT_PREVIEW_SHADER.into()
    }

    fn alpha_mode(&self) -> AlphaMode {
        AlphaMode::Blend
    }

    // Splats are translucent: no depth prepass, no shadow maps.
    fn enable_prepass() -> bool {
        false
    }

    fn enable_shadows() -> bool {
        false
    }

    fn specialize(
        _pipeline: &MaterialPipeline,
        descriptor: &mut RenderPipelineDescriptor,
        layout: &MeshVertexBufferLayoutRef,
        _key: MaterialPipelineKey<Self>,
    ) -> Result<(), SpecializedMeshPipelineError> {
        let vertex_layout = layout.0.get_layout(&[
            Mesh::ATTRIBUTE_POSITION.at_shader_location(0),
            ATTRIBUTE_SPLAT_CORNER.at_shader_location(1),
            ATTRIBUTE_SPLAT_COV_A.at_shader_location(2),
            ATTRIBUTE_SPLAT_COV_B.at_shader_location(3),
            Mesh::ATTRIBUTE_COLOR.at_shader_location(4),
        ])?;
        descriptor.vertex.buffers = vec![vertex_layout];
        // Both windings: the quads face the camera whichever way they were sorted.
        descriptor.primitive.cull_mode = None;
        Ok(())
    }
}

/// Registers the material and its embedded shader. Needs the renderer (`PbrPlugin`).
pub(crate) struct SplatPreviewPlugin;

impl Plugin for SplatPreviewPlugin {
    fn build(&self, app: &mut App) {
        load_internal_asset!(
            app,
            SPLAT_PREVIEW_SHADER,
            "../../shaders/splat_preview.wgsl",
            Shader::from_wgsl
        );
        app.add_plugins(MaterialPlugin::<SplatPreviewMaterial>::default())
            .add_systems(PostUpdate, sort_splat_previews);
    }
}

/// The centres of a splat preview's Gaussians, and the eye its quads were last sorted for.
#[derive(Component, Reflect, Debug, Clone)]
#[reflect(Component, Debug, Clone)]
pub struct SplatDepthOrder {
    centres: Vec<Vec3>,
    sorted_for: Option<(Vec3, Vec3)>,
}

impl SplatDepthOrder {
    /// Unsorted order for these Gaussians (sorted on the next frame).
    pub fn new(cloud: &SplatCloud) -> Self {
        Self {
            centres: cloud.positions.iter().map(|&p| Vec3::from(p)).collect(),
            sorted_for: None,
        }
    }
}

/// A mesh of four vertices per Gaussian (its centre, a corner, its covariance, linear colour
/// and opacity) and two triangles per quad, in the cloud's order. Draw it with
/// [`SplatPreviewMaterial`].
pub fn splats_to_bevy_mesh(cloud: &SplatCloud) -> Mesh {
    let n = cloud.len();
    let mut positions = Vec::with_capacity(4 * n);
    let mut corners = Vec::with_capacity(4 * n);
    let mut cov_a = Vec::with_capacity(4 * n);
    let mut cov_b = Vec::with_capacity(4 * n);
    let mut colors = Vec::with_capacity(4 * n);
    for i in 0..n {
        let [xx, xy, xz, yy, yz, zz] = cloud.covariance(i);
        // The engine's colours are what its renders show (sRGB-encoded); Bevy blends in linear.
        let [r, g, b] = cloud.colors[i].map(srgb_to_linear);
        for corner in CORNERS {
            positions.push(cloud.positions[i]);
            corners.push(corner);
            cov_a.push([xx, xy, xz]);
            cov_b.push([yy, yz, zz]);
            colors.push([r, g, b, cloud.opacities[i]]);
        }
    }
    let order: Vec<u32> = (0..n as u32).collect();
    // Kept in the main world too: the index buffer is rewritten when the view changes.
    Mesh::new(
        PrimitiveTopology::TriangleList,
        RenderAssetUsages::default(),
    )
    .with_inserted_attribute(Mesh::ATTRIBUTE_POSITION, positions)
    .with_inserted_attribute(ATTRIBUTE_SPLAT_CORNER, corners)
    .with_inserted_attribute(ATTRIBUTE_SPLAT_COV_A, cov_a)
    .with_inserted_attribute(ATTRIBUTE_SPLAT_COV_B, cov_b)
    .with_inserted_attribute(Mesh::ATTRIBUTE_COLOR, colors)
    .with_inserted_indices(Indices::U32(quad_indices(&order)))
}

/// The components a splat preview entity carries besides its mesh and material.
pub(crate) fn splat_bundle(cloud: &SplatCloud) -> impl Bundle {
    (
        SplatDepthOrder::new(cloud),
        NoFrustumCulling,
        NotShadowCaster,
    )
}

/// Splat indices ordered farthest first along `forward` from `eye` (back to front, as
/// "over" blending needs); ties keep their index order.
pub fn back_to_front(centres: &[Vec3], eye: Vec3, forward: Vec3) -> Vec<u32> {
    let depth: Vec<f32> = centres.iter().map(|&c| (c - eye).dot(forward)).collect();
    let mut order: Vec<u32> = (0..centres.len() as u32).collect();
    order.sort_by(|&a, &b| depth[b as usize].total_cmp(&depth[a as usize]));
    order
}

/// Two triangles per splat, splats in `order`.
fn quad_indices(order: &[u32]) -> Vec<u32> {
    order
        .iter()
        .flat_map(|&i| {
            let v = 4 * i;
            [v, v + 1, v + 2, v, v + 2, v + 3]
        })
        .collect()
}

/// Whether a sort made for `old` (eye, forward; in the preview's space) is stale for `new`:
/// the camera moved by more than 2% of its distance to the preview (its origin, the asset's
/// foot), or turned by more than about 2.5 degrees. Re-sorting uploads the whole mesh, so
/// small motions keep the order.
fn needs_resort(old: Option<(Vec3, Vec3)>, new: (Vec3, Vec3)) -> bool {
    let Some((eye, forward)) = old else {
        return true;
    };
    let distance = new.0.length().max(1e-3);
    (new.0 - eye).length() > 0.02 * distance || forward.dot(new.1) < 0.999
}

/// Re-sorts splat previews back to front for the first active 3D camera.
fn sort_splat_previews(
    cameras: Query<(&Camera, &GlobalTransform), With<Camera3d>>,
    mut previews: Query<(&GlobalTransform, &Mesh3d, &mut SplatDepthOrder)>,
    mut meshes: ResMut<Assets<Mesh>>,
) {
    let Some((_, camera)) = cameras.iter().find(|(c, _)| c.is_active) else {
        return;
    };
    for (transform, mesh, mut order) in &mut previews {
        // The camera in the preview's own space, where the centres are.
        let local_from_world = transform.affine().inverse();
        let eye = local_from_world.transform_point3(camera.translation());
        let forward = local_from_world
            .transform_vector3(camera.forward().as_vec3())
            .normalize_or_zero();
        if !needs_resort(order.sorted_for, (eye, forward)) {
            continue;
        }
        let Some(mut mesh) = meshes.get_mut(&mesh.0) else {
            continue;
        };
        let sorted = back_to_front(&order.centres, eye, forward);
        mesh.insert_indices(Indices::U32(quad_indices(&sorted)));
        order.sorted_for = Some((eye, forward));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevy::mesh::VertexAttributeValues;

    fn cloud() -> SplatCloud {
        // One Gaussian stretched along x (sd 2) then turned 90 degrees about z: along y.
        let half = std::f32::consts::FRAC_1_SQRT_2;
        SplatCloud {
            positions: vec![[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
            scales: vec![[2.0, 1.0, 0.5], [1.0, 1.0, 1.0]],
            rotations: vec![[half, 0.0, 0.0, half], [1.0, 0.0, 0.0, 0.0]],
            opacities: vec![0.5, 1.0],
            colors: vec![[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]],
            sh: vec![vec![0.0; 3]; 2],
        }
    }

    fn floats<const K: usize>(mesh: &Mesh, attribute: MeshVertexAttribute) -> Vec<[f32; K]> {
        let values = mesh.attribute(attribute).expect("attribute present");
        let flat: Vec<f32> = match values {
            VertexAttributeValues::Float32x2(v) => v.iter().flatten().copied().collect(),
            VertexAttributeValues::Float32x3(v) => v.iter().flatten().copied().collect(),
            VertexAttributeValues::Float32x4(v) => v.iter().flatten().copied().collect(),
            _ => panic!("unexpected attribute format"),
        };
        flat.chunks(K).map(|c| c.try_into().unwrap()).collect()
    }

    #[test]
    fn four_vertices_per_splat_with_its_covariance_and_linear_colour() {
        let mesh = splats_to_bevy_mesh(&cloud());
        assert_eq!(mesh.count_vertices(), 8);
        let positions = floats::<3>(&mesh, Mesh::ATTRIBUTE_POSITION);
        assert_eq!(&positions[4..], &[[1.0, 2.0, 3.0]; 4]);
        let corners = floats::<2>(&mesh, ATTRIBUTE_SPLAT_CORNER);
        assert_eq!(&corners[..4], &CORNERS);
        // Rotated: variance 4 along y, 1 along x, 0.25 along z, no correlation.
        let (a, b) = (
            floats::<3>(&mesh, ATTRIBUTE_SPLAT_COV_A)[0],
            floats::<3>(&mesh, ATTRIBUTE_SPLAT_COV_B)[0],
        );
        let expected = [1.0, 0.0, 0.0, 4.0, 0.0, 0.25];
        for (got, want) in a.iter().chain(&b).zip(expected) {
            assert!((got - want).abs() < 1e-5, "{a:?} {b:?}");
        }
        let colors = floats::<4>(&mesh, Mesh::ATTRIBUTE_COLOR);
        assert_eq!(colors[0][0], 1.0);
        assert!((colors[0][1] - srgb_to_linear(0.5)).abs() < 1e-6);
        assert_eq!(colors[0][3], 0.5);
        assert_eq!(colors[4], [0.0, 0.0, 1.0, 1.0]);
        let Some(Indices::U32(indices)) = mesh.indices() else {
            panic!("u32 indices")
        };
        assert_eq!(indices, &[0, 1, 2, 0, 2, 3, 4, 5, 6, 4, 6, 7]);
    }

    #[test]
    fn sorting_puts_the_farthest_first() {
        let centres = [
            Vec3::new(0.0, 0.0, -1.0),
            Vec3::new(0.0, 0.0, -5.0),
            Vec3::ZERO,
        ];
        // Looking down -z from z = 1: the one at -5 is farthest.
        assert_eq!(back_to_front(&centres, Vec3::Z, -Vec3::Z), vec![1, 0, 2]);
        // From the other side the order flips.
        assert_eq!(
            back_to_front(&centres, -10.0 * Vec3::Z, Vec3::Z),
            vec![2, 0, 1]
        );
        assert_eq!(quad_indices(&[1, 0])[..6], [4, 5, 6, 4, 6, 7]);
    }

    #[test]
    fn small_camera_motions_keep_the_order() {
        let sorted = Some((Vec3::new(0.0, 0.0, 5.0), -Vec3::Z));
        assert!(needs_resort(None, (Vec3::Z, -Vec3::Z)));
        assert!(!needs_resort(sorted, (Vec3::new(0.05, 0.0, 5.0), -Vec3::Z)));
        assert!(needs_resort(sorted, (Vec3::new(0.5, 0.0, 5.0), -Vec3::Z)));
        let turned = Vec3::new(0.1, 0.0, -1.0).normalize();
        assert!(needs_resort(sorted, (Vec3::new(0.0, 0.0, 5.0), turned)));
    }
}
