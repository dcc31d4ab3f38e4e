//! Surface extraction from density fields: sampling, surface nets, cleanup, simplification,
//! colour.
//!
//! [`extract_mesh`] runs the whole stage:
//! 1. sample the [`DensityField`] on a grid over the object's bounds ([`DensityGrid`]), the
//!    iso-level given or found from the field's statistics ([`IsoLevel::Auto`]);
//! 2. extract the surface with surface nets ([`extract_surface`]), closed by construction;
//! 3. drop floaters, the small disconnected pieces ([`remove_floaters`]), and the pieces
//!    coloured like the backdrop ([`remove_backdrop_pieces`]);
//! 4. simplify to a triangle budget with meshopt ([`simplify`]), plus optional LODs;
//! 5. smooth normals, vertex colours from the [`AlbedoField`] ([`paint_vertex_colors`]), or
//!    a UV atlas ([`unwrap_uvs`]) and a baked texture ([`bake_texture`]).
//!
//! The result is a [`TriMesh`] in the field's world space (Y up); the glTF writer in
//! [`crate::export`] places it on the ground and scales it.

mod atlas;
mod backdrop;
mod bake;
mod cleanup;
mod color;
mod error;
mod extract;
mod field;
mod nerf_field;
mod raster;
mod simplify;
mod trimesh;

pub use atlas::{BakeConfig, UvAtlas, unwrap_uvs};
pub use backdrop::{BackdropPieces, remove_backdrop_pieces};
pub use bake::{BakedMesh, bake_texture, texels_in_triangle};
pub use cleanup::{Components, FloaterReport, connected_components, remove_floaters};
pub use color::{ColorMode, paint_vertex_colors, srgb_to_linear};
pub use error::MeshError;
pub use extract::extract_surface;
pub use field::{Aabb, AlbedoField, DensityField, DensityGrid, Pointwise};
pub use nerf_field::{DEFAULT_NERF_CHUNK, NerfField};
pub use raster::{Fragments, NEAR_DEPTH, rasterize, render_mesh, render_shaded, sample_bilinear};
pub use simplify::{Simplified, SimplifyConfig, lod_chain, simplify};
pub use trimesh::{EdgeReport, TriMesh};

use std::fmt;
use std::time::{Duration, Instant};

use glam::Vec3;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where the surface lies: the density it is drawn at.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum IsoLevel {
    /// From the field's statistics, as threestudio's `isosurface_threshold: auto` with
    /// `isosurface_coarse_to_fine`: a coarse grid over the bounds, thresholded at
    /// mean + 5 std (only the object's dense core passes), gives the object's box; the box,
    /// grown by 10% of its size and one coarse voxel on every side, is sampled finely and the
    /// surface drawn at that grid's mean density. When nothing passes the coarse threshold the
    /// whole bounds are sampled finely. Unlike threestudio, a box side the surface reaches is
    /// widened (same level) so the object is not cut flat there.
    #[default]
    Auto,
    /// A fixed density.
    Value(f32),
}

impl fmt::Display for IsoLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Value(v) => write!(f, "{v}"),
        }
    }
}

// In config files: `iso_level = "auto"` or `iso_level = 5.0`.
impl Serialize for IsoLevel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Value(v) => s.serialize_f32(*v),
        }
    }
}

impl<'de> Deserialize<'de> for IsoLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Value(f32),
            Word(String),
        }
        match Repr::deserialize(d)? {
            Repr::Value(v) => Ok(Self::Value(v)),
            Repr::Word(w) if w == "auto" => Ok(Self::Auto),
            Repr::Word(w) => Err(serde::de::Error::custom(format!(
                "iso_level '{w}': expected \"auto\" or a number"
            ))),
        }
    }
}

/// Mesh-stage settings. Defaults suit a prop from a NeRF of radius 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// Grid samples along the longest side of the sampled box (voxels are cubes). 128 is
    /// threestudio's default; with [`IsoLevel::Auto`] the grid spans the object's box, not the
    /// whole scene. Cost grows with the cube: a default-size NeRF on the CPU (ndarray) takes
    /// about 40 s at 128 and 5 min at 256; a GPU backend is much faster.
    pub resolution: u32,
    /// Samples along the longest side for [`IsoLevel::Auto`]'s coarse pass.
    pub coarse_resolution: u32,
    /// The density the surface is drawn at.
    pub iso_level: IsoLevel,
    /// Connected pieces with less than this fraction of the largest piece's area are dropped
    /// as floaters (`0` keeps everything).
    pub min_component_fraction: f64,
    /// Small pieces coloured like the backdrop the guidance saw, dropped as floaters too.
    pub backdrop_pieces: BackdropPieces,
    /// Simplification budget and optional LODs.
    pub simplify: SimplifyConfig,
    /// How the mesh is coloured.
    pub color: ColorMode,
    /// The UV atlas and texture for [`ColorMode::Texture`].
    pub bake: BakeConfig,
    /// Most points per field query (bounds memory on the GPU).
    pub chunk: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            resolution: 128,
            coarse_resolution: 64,
            iso_level: IsoLevel::Auto,
            min_component_fraction: 0.05,
            backdrop_pieces: BackdropPieces::default(),
            simplify: SimplifyConfig::default(),
            color: ColorMode::VertexColors,
            bake: BakeConfig::default(),
            chunk: DEFAULT_NERF_CHUNK,
        }
    }
}

impl MeshConfig {
    /// Checks the values; the error names the setting.
    pub fn validate(&self) -> Result<(), MeshError> {
        let bad = |name, value: String, why| Err(MeshError::BadConfig { name, value, why });
        if !(2..=1024).contains(&self.resolution) {
            return bad(
                "resolution",
                self.resolution.to_string(),
                "must be in 2..=1024",
            );
        }
        if !(2..=1024).contains(&self.coarse_resolution) {
            return bad(
                "coarse_resolution",
                self.coarse_resolution.to_string(),
                "must be in 2..=1024",
            );
        }
        if let IsoLevel::Value(v) = self.iso_level
            && !v.is_finite()
        {
            return bad(
                "iso_level",
                v.to_string(),
                "must be \"auto\" or a finite number",
            );
        }
        if !(0.0..=1.0).contains(&self.min_component_fraction) {
            return bad(
                "min_component_fraction",
                self.min_component_fraction.to_string(),
                "must be in [0, 1]",
            );
        }
        if self.chunk == 0 {
            return bad("chunk", "0".into(), "must be at least 1");
        }
        self.backdrop_pieces.validate()?;
        self.bake.validate()?;
        self.simplify.validate()
    }
}

/// Wall time of each step of [`extract_mesh`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MeshTimings {
    /// Field queries (both passes for [`IsoLevel::Auto`]).
    pub sample: Duration,
    /// Surface nets.
    pub extract: Duration,
    /// Floater removal.
    pub cleanup: Duration,
    /// Simplification, normals and vertex ordering (LODs included).
    pub simplify: Duration,
    /// Albedo queries (vertex colours and texture bake).
    pub color: Duration,
}

/// What [`extract_mesh`] did, for logs and the `.json` beside the asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshReport {
    /// The iso-level the surface was drawn at.
    pub iso_level: f32,
    /// Samples per axis of the fine grid.
    pub grid_dims: [u32; 3],
    /// Its voxel size.
    pub voxel: f32,
    /// The box it spans.
    pub sampled_bounds: Aabb,
    /// Triangles straight out of surface nets.
    pub extracted_triangles: usize,
    /// Floater removal.
    pub floaters: FloaterReport,
    /// What was pruned from a Gaussian scene before its field was sampled (`None` for a
    /// NeRF).
    #[serde(default)]
    pub gaussian_prune: Option<crate::scene::gaussians::PruneReport>,
    /// Triangles and vertices of the final mesh.
    pub triangles: usize,
    /// Vertices of the final mesh.
    pub vertices: usize,
    /// Simplification error, relative to the mesh's extent.
    pub simplify_error: f32,
    /// Step times.
    pub timings: MeshTimings,
}

/// A finished mesh stage.
#[derive(Debug, Clone)]
pub struct ExtractedMesh {
    /// The mesh at the triangle budget (split on the atlas's seams and UV-mapped when a
    /// texture was baked).
    pub mesh: TriMesh,
    /// The baked base-colour texture, for [`ColorMode::Texture`] with an albedo field.
    pub texture: Option<image::RgbImage>,
    /// Further levels of detail, coarsest last (empty unless configured).
    pub lods: Vec<TriMesh>,
    /// What was done.
    pub report: MeshReport,
}

/// Samples `density` over `bounds` and resolves the iso-level (see [`IsoLevel::Auto`]):
/// returns the fine grid and the level to draw the surface at.
pub fn sample_field(
    density: &(impl DensityField + ?Sized),
    bounds: Aabb,
    config: &MeshConfig,
) -> Result<(DensityGrid, f32), MeshError> {
    let (grid, level) = match config.iso_level {
        IsoLevel::Value(level) => (
            DensityGrid::sample(density, bounds, config.resolution, config.chunk)?,
            level,
        ),
        IsoLevel::Auto => {
            let coarse =
                DensityGrid::sample(density, bounds, config.coarse_resolution, config.chunk)?;
            let (mean, std) = coarse.mean_std();
            let fine_bounds = coarse
                .occupied_bounds(mean + 5.0 * std)
                .map(|core| {
                    let margin = core.size() * 0.1 + Vec3::splat(coarse.voxel);
                    core.grown(margin).intersection(&bounds)
                })
                .filter(Aabb::is_valid)
                .unwrap_or(bounds);
            let mut grid =
                DensityGrid::sample(density, fine_bounds, config.resolution, config.chunk)?;
            let level = grid.mean_std().0;
            // Where the density falls off slowly the surface can reach past threestudio's box
            // and would be capped flat there: widen the cut sides (at most 3 times, never past
            // `bounds`) and sample again at the same level.
            for _ in 0..3 {
                let Some(wider) = widen_cut_sides(&grid, level, &bounds) else {
                    break;
                };
                grid = DensityGrid::sample(density, wider, config.resolution, config.chunk)?;
            }
            (grid, level)
        }
    };
    grid.check_not_empty(level)?;
    Ok((grid, level))
}

/// `grid`'s box widened by a quarter of its size on every side where the surface reaches the
/// box's face while `bounds` extends further; `None` when no side needs it.
fn widen_cut_sides(grid: &DensityGrid, level: f32, bounds: &Aabb) -> Option<Aabb> {
    let current = grid.bounds();
    let step = current.size() * 0.25;
    let slack = grid.voxel * 0.5;
    let mut wider = current;
    let mut changed = false;
    for (a, [low, high]) in grid.faces_above(level).into_iter().enumerate() {
        if low && current.min[a] > bounds.min[a] + slack {
            wider.min[a] = (current.min[a] - step[a]).max(bounds.min[a]);
            changed = true;
        }
        if high && current.max[a] < bounds.max[a] - slack {
            wider.max[a] = (current.max[a] + step[a]).min(bounds.max[a]);
            changed = true;
        }
    }
    changed.then_some(wider)
}

/// The whole mesh stage: sample, extract, remove floaters, simplify, normals, colours.
/// `albedo` colours the mesh when [`MeshConfig::color`] asks for it; `None` leaves it
/// uncoloured.
pub fn extract_mesh(
    density: &(impl DensityField + ?Sized),
    albedo: Option<&dyn AlbedoField>,
    bounds: Aabb,
    config: &MeshConfig,
) -> Result<ExtractedMesh, MeshError> {
    config.validate()?;
    let mut timings = MeshTimings::default();

    let t = Instant::now();
    let (grid, iso_level) = sample_field(density, bounds, config)?;
    timings.sample = t.elapsed();

    let t = Instant::now();
    let raw = extract_surface(&grid, iso_level)?;
    let (grid_dims, voxel, sampled_bounds) = (grid.dims, grid.voxel, grid.bounds());
    drop(grid);
    timings.extract = t.elapsed();
    let extracted_triangles = raw.triangle_count();

    let t = Instant::now();
    let (mut kept, mut floaters) = remove_floaters(&raw, config.min_component_fraction);
    drop(raw);
    if let Some(albedo) = albedo {
        let backdrop;
        (kept, backdrop) =
            remove_backdrop_pieces(&kept, albedo, &config.backdrop_pieces, config.chunk)?;
        floaters.backdrop_components = backdrop;
    }
    timings.cleanup = t.elapsed();

    let t = Instant::now();
    let simplified = simplify(
        &kept,
        config.simplify.target_triangles,
        config.simplify.max_error,
    );
    let mut mesh = simplified.mesh;
    if mesh.is_empty() {
        return Err(MeshError::NoTriangles {
            stage: "simplification",
        });
    }
    mesh.compute_smooth_normals();
    mesh.optimize();
    timings.simplify = t.elapsed();

    let t = Instant::now();
    if let (ColorMode::VertexColors | ColorMode::Texture, Some(albedo)) = (config.color, albedo) {
        paint_vertex_colors(&mut mesh, albedo, config.chunk)?;
    }
    timings.color = t.elapsed();

    let t = Instant::now();
    let lods = lod_chain(
        &mesh,
        &config.simplify.lod_triangles,
        config.simplify.max_error,
    )
    .into_iter()
    .map(|l| l.mesh)
    .collect();
    timings.simplify += t.elapsed();

    let t = Instant::now();
    let mut texture = None;
    if let (ColorMode::Texture, Some(albedo)) = (config.color, albedo) {
        let baked = bake_texture(&mesh, albedo, &config.bake, config.chunk)?;
        mesh = baked.mesh;
        texture = Some(baked.texture);
    }
    timings.color += t.elapsed();

    let report = MeshReport {
        iso_level,
        grid_dims,
        voxel,
        sampled_bounds,
        extracted_triangles,
        floaters,
        gaussian_prune: None,
        triangles: mesh.triangle_count(),
        vertices: mesh.vertex_count(),
        simplify_error: simplified.relative_error,
        timings,
    };
    Ok(ExtractedMesh {
        mesh,
        texture,
        lods,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_level_reads_auto_or_a_number() {
        let auto: IsoLevel = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(auto, IsoLevel::Auto);
        let value: IsoLevel = serde_json::from_str("2.5").unwrap();
        assert_eq!(value, IsoLevel::Value(2.5));
        let err = serde_json::from_str::<IsoLevel>("\"mean\"").unwrap_err();
        assert!(err.to_string().contains("expected \"auto\""), "{err}");
        let config = MeshConfig::default();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<MeshConfig>(&json).unwrap(), config);
    }

    #[test]
    fn auto_widens_only_the_sides_the_surface_reaches() {
        // 5 samples per axis over [-0.5, 0.5]^3, dense in the middle of the +x face only.
        let mut grid = DensityGrid {
            origin: Vec3::splat(-0.5),
            voxel: 0.25,
            dims: [5; 3],
            values: vec![0.0; 125],
        };
        for i in 0..125 {
            let [x, y, z] = grid.coords(i);
            if x == 4 && (1..4).contains(&y) && (1..4).contains(&z) {
                grid.values[i] = 1.0;
            }
        }
        let bounds = Aabb::cube(1.0);
        let wider = widen_cut_sides(&grid, 0.5, &bounds).unwrap();
        assert_eq!(wider.min, Vec3::splat(-0.5));
        assert_eq!(wider.max, Vec3::new(0.75, 0.5, 0.5));
        // Already at the bounds on that side: nothing to widen.
        assert!(widen_cut_sides(&grid, 0.5, &Aabb::cube(0.5)).is_none());
        // Nothing reaches a face.
        assert!(widen_cut_sides(&grid, 2.0, &bounds).is_none());
    }

    #[test]
    fn config_errors_name_the_setting() {
        let config = MeshConfig {
            resolution: 1,
            ..Default::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("resolution")
        );
        let mut config = MeshConfig::default();
        config.simplify.target_triangles = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("simplify.target_triangles"), "{err}");
    }
}
