//! Stage 2, DreamGaussian's texture refinement: the stage-1 surface is meshed, UV-unwrapped
//! and its albedo baked into a texture ([`crate::mesh::bake_texture`]); then the mesh stays
//! fixed and the texture alone is optimised with the run's own guidance (SDS, RewardSDS with
//! every strategy, VSD) on renders of the mesh from the stage-1 camera ranges.
//!
//! Each step rasterises the mesh once per camera on the CPU (triangle id and perspective-
//! correct barycentrics, [`rasterize`]; not differentiated) and samples the texture bilinearly
//! at each pixel's UV by a gather (`select`), whose backward is a scatter-add: the gradient
//! reaches exactly the four texels behind each pixel. The render is unlit albedo over a
//! constant background, as the Gaussian scenes render. Texels are sRGB display values kept in
//! `[0, 1]` by clamping after each Adam step, as the 2D canvas is.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::module::avg_pool2d;
use burn::tensor::{Int, Tensor, TensorData};
use glam::Vec2;
use serde::{Deserialize, Serialize};

use crate::backend::EngineAutodiffBackend;
use crate::guidance::{AnnealedFraction, ConfigError};
use crate::mesh::{
    ExtractedMesh, Fragments, MeshConfig, MeshReport, TriMesh, lod_chain, rasterize,
};
use crate::optim::{GroupedOptimizer, OptimizerConfig, ParamGroup};
use crate::rgb_image::RgbImage;
use crate::scene::Camera;

/// Stage-2 settings (`texture_stage` in a config). Defaults from DreamGaussian's text-to-3D
/// refinement (`iters_refine` 50; its noise strength 0.8 -> 0.95 of 50 DDIM steps puts t at
/// about 0.18 T falling to 0.04 T).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextureStageConfig {
    /// Steps of stage 2, after the `steps` of stage 1.
    pub steps: usize,
    /// Adam's learning rate on the texels (values in `[0, 1]`), the 2D canvas's.
    pub lr: f64,
    /// Smallest timestep fraction, annealed over the stage's steps.
    pub t_min: AnnealedFraction,
    /// Largest timestep fraction, annealed over the stage's steps.
    pub t_max: AnnealedFraction,
    /// Views per step; unset: stage 1's at its last step.
    pub views: Option<usize>,
    /// Side of the rendered views; unset: stage 1's last.
    pub render_size: Option<u32>,
    /// Colour behind the mesh (display values).
    pub background: [f32; 3],
    /// Rasterise at this many times the view's side and average down (anti-aliasing: the
    /// volume-rendered views of stage 1 have soft edges, a 1x rasterisation jagged ones).
    pub supersample: u32,
}

impl Default for TextureStageConfig {
    fn default() -> Self {
        Self {
            steps: 50,
            lr: 0.02,
            t_min: AnnealedFraction::constant(0.02),
            t_max: AnnealedFraction::linear(0.2, 0.05),
            views: None,
            render_size: None,
            background: [0.92; 3],
            supersample: 2,
        }
    }
}

impl TextureStageConfig {
    /// Checks every field; errors name it (`texture_stage.<name>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |name: &str, why: String| Err(ConfigError::new(name, why));
        if self.steps == 0 {
            return bad("texture_stage.steps", "must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("texture_stage.lr", format!("{} is not above 0", self.lr));
        }
        for (name, f) in [
            ("texture_stage.t_min", self.t_min),
            ("texture_stage.t_max", self.t_max),
        ] {
            if ![f.start, f.end].iter().all(|v| (0.0..=1.0).contains(v)) {
                return bad(name, format!("{f:?} is not a fraction in [0, 1]"));
            }
        }
        if self.t_min.start > self.t_max.start || self.t_min.end > self.t_max.end {
            return bad(
                "texture_stage.t_min",
                "must not exceed texture_stage.t_max".into(),
            );
        }
        if self.views == Some(0) {
            return bad("texture_stage.views", "must be at least 1".into());
        }
        if let Some(size) = self.render_size
            && !(8..=super::config::MAX_RENDER_SIZE).contains(&size)
        {
            return bad(
                "texture_stage.render_size",
                format!("{size} is not in 8..={}", super::config::MAX_RENDER_SIZE),
            );
        }
        if !(1..=4).contains(&self.supersample) {
            return bad(
                "texture_stage.supersample",
                format!("{} is not in 1..=4", self.supersample),
            );
        }
        if self.background.iter().any(|c| !(0.0..=1.0).contains(c)) {
            return bad(
                "texture_stage.background",
                format!("{:?} must lie in [0, 1]", self.background),
            );
        }
        Ok(())
    }
}

/// The optimised texture as a module, so the optimiser and its per-parameter state apply.
#[derive(Module, Debug)]
pub struct Texture<B: Backend> {
    /// `[size * size, 3]`, row-major from the top-left texel, sRGB values in `[0, 1]`.
    pub texels: Param<Tensor<B, 2>>,
}

/// Where each pixel of a batch of views reads the texture: four texels and their bilinear
/// weights per pixel (all zero on the background), and the pixel's coverage (0 or 1).
#[derive(Debug, Clone, PartialEq)]
pub struct TexelLookup {
    /// Four texel indices per pixel, views after one another, rows top to bottom.
    pub indices: Vec<i64>,
    /// The four bilinear weights per pixel.
    pub weights: Vec<f32>,
    /// 1 where the mesh covers the pixel.
    pub coverage: Vec<f32>,
}

impl TexelLookup {
    /// Rasterises `mesh` (with UVs) for every camera and resolves each covered pixel's UV to
    /// the four texels of a `size`-texel square texture around it (clamped at the edges, as
    /// the exported sampler's `CLAMP_TO_EDGE`).
    pub fn new(mesh: &TriMesh, size: u32, cameras: &[Camera]) -> Self {
        let mut lookup = Self {
            indices: Vec::new(),
            weights: Vec::new(),
            coverage: Vec::new(),
        };
        let max = (size - 1) as f32;
        for camera in cameras {
            let frags = rasterize(mesh, camera);
            for (&id, b) in frags.triangle.iter().zip(&frags.barycentric) {
                if id == Fragments::BACKGROUND || mesh.uvs.len() != mesh.positions.len() {
                    lookup.indices.extend([0; 4]);
                    lookup.weights.extend([0.0; 4]);
                    lookup.coverage.push(0.0);
                    continue;
                }
                let t = &mesh.indices[3 * id as usize..][..3];
                let uv = (0..3).fold(Vec2::ZERO, |acc, k| {
                    acc + Vec2::from(mesh.uvs[t[k] as usize]) * b[k]
                });
                // Texel centres sit at half-integers.
                let x = (uv.x * size as f32 - 0.5).clamp(0.0, max);
                let y = (uv.y * size as f32 - 0.5).clamp(0.0, max);
                let (x0, y0) = (x.floor(), y.floor());
                let (x1, y1) = ((x0 + 1.0).min(max), (y0 + 1.0).min(max));
                let (fx, fy) = (x - x0, y - y0);
                let at = |x: f32, y: f32| y as i64 * size as i64 + x as i64;
                lookup
                    .indices
                    .extend([at(x0, y0), at(x1, y0), at(x0, y1), at(x1, y1)]);
                lookup.weights.extend([
                    (1.0 - fx) * (1.0 - fy),
                    fx * (1.0 - fy),
                    (1.0 - fx) * fy,
                    fx * fy,
                ]);
                lookup.coverage.push(1.0);
            }
        }
        lookup
    }

    /// Renders `texels` (`[size * size, 3]`) through the lookup: `[views, 3, height, width]`,
    /// `background` where the mesh does not cover. Differentiable in `texels`.
    pub fn render<C: Backend>(
        &self,
        texels: Tensor<C, 2>,
        background: [f32; 3],
        [views, height, width]: [usize; 3],
    ) -> Tensor<C, 4> {
        let device = texels.device();
        let pixels = self.coverage.len();
        let index = Tensor::<C, 1, Int>::from_data(
            TensorData::new(self.indices.clone(), [4 * pixels]),
            &device,
        );
        let weights = Tensor::<C, 2>::from_data(
            TensorData::new(self.weights.clone(), [4 * pixels, 1]),
            &device,
        );
        let coverage =
            Tensor::<C, 2>::from_data(TensorData::new(self.coverage.clone(), [pixels, 1]), &device);
        let background =
            Tensor::<C, 2>::from_data(TensorData::new(background.to_vec(), [1, 3]), &device);
        let albedo = (texels.select(0, index) * weights)
            .reshape([pixels, 4, 3])
            .sum_dim(1)
            .reshape([pixels, 3]);
        let rgb = albedo + background * (coverage.neg() + 1.0);
        crate::render::RenderOutput::images(rgb, views, height, width)
    }
}

/// What stage 2 optimises: a fixed UV-mapped mesh and its texture.
pub struct TexturedScene<B: EngineAutodiffBackend> {
    /// The mesh (positions, normals, atlas UVs), in the stage-1 scene's space.
    pub(super) mesh: TriMesh,
    /// Side of the square texture.
    pub(super) size: u32,
    pub(super) texture: Texture<B>,
    pub(super) optimizer: GroupedOptimizer<Texture<B>, B>,
    pub(super) config: TextureStageConfig,
    /// How stage 1's surface was meshed (for the asset's report).
    pub(super) report: MeshReport,
}

impl<B: EngineAutodiffBackend> TexturedScene<B> {
    /// Stage 2 from a UV-mapped `mesh` and its baked `texture` (square).
    pub fn new(
        mesh: TriMesh,
        texture: &image::RgbImage,
        report: MeshReport,
        config: TextureStageConfig,
        optimizer: &OptimizerConfig,
        device: &B::Device,
    ) -> Self {
        let size = texture.width();
        let values: Vec<f32> = texture.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
        let texels =
            Tensor::<B, 2>::from_data(TensorData::new(values, [(size * size) as usize, 3]), device)
                .require_grad();
        Self {
            mesh,
            size,
            texture: Texture {
                texels: Param::from_tensor(texels),
            },
            optimizer: optimizer.init::<B, Texture<B>>(),
            config,
            report,
        }
    }

    /// The stage's settings.
    pub fn config(&self) -> &TextureStageConfig {
        &self.config
    }

    /// The mesh the texture maps.
    pub fn mesh(&self) -> &TriMesh {
        &self.mesh
    }

    /// Renders `cameras` (all of one size) with gradients to the texture.
    pub fn render(&self, cameras: &[Camera]) -> Tensor<B, 4> {
        self.render_texels(self.texture.texels.val(), cameras)
    }

    /// `texels` through `cameras`, rasterised at `supersample` times their side and averaged
    /// down.
    fn render_texels<C: Backend>(&self, texels: Tensor<C, 2>, cameras: &[Camera]) -> Tensor<C, 4> {
        let k = self.config.supersample.max(1);
        let fine: Vec<Camera> = cameras
            .iter()
            .map(|c| Camera {
                width: c.width * k,
                height: c.height * k,
                ..c.clone()
            })
            .collect();
        let lookup = TexelLookup::new(&self.mesh, self.size, &fine);
        let (h, w) = fine
            .first()
            .map_or((0, 0), |c| (c.height as usize, c.width as usize));
        let image = lookup.render(texels, self.config.background, [fine.len(), h, w]);
        if k == 1 {
            return image;
        }
        let k = k as usize;
        avg_pool2d(image, [k, k], [k, k], [0, 0], true, false)
    }

    /// One Adam step on the texture from the loss's gradients, then the texels clamped back
    /// into `[0, 1]` (the parameter stays a leaf with its id, which keys Adam's state).
    pub fn update(&mut self, grads: &mut B::Gradients) {
        let groups = vec![ParamGroup {
            name: "texture",
            lr: self.config.lr,
            grads: GradientsParams::from_module(grads, &self.texture),
        }];
        let texture = self.optimizer.step(self.texture.clone(), groups);
        self.texture = Texture {
            texels: texture
                .texels
                .map(|t| Tensor::from_inner(t.inner().clamp(0.0, 1.0)).require_grad()),
        };
    }

    /// Renders `cameras` (all of one size) without gradients, for people and the judge.
    pub fn render_views(&self, cameras: &[Camera]) -> Vec<RgbImage> {
        RgbImage::from_tensor(self.render_texels(self.texture.texels.val().inner(), cameras))
    }

    /// The texture as an sRGB image (what the `.glb` embeds).
    pub fn texture_image(&self) -> image::RgbImage {
        let values: Vec<f32> = self
            .texture
            .texels
            .val()
            .inner()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let bytes = values
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        image::RgbImage::from_raw(self.size, self.size, bytes)
            .unwrap_or_else(|| image::RgbImage::new(self.size, self.size))
    }

    /// The textured mesh as the mesh stage's result: its levels of detail from `mesh`'s
    /// `simplify.lod_triangles` (UVs kept), the texture as it is now.
    pub fn extracted(&self, mesh: &MeshConfig) -> ExtractedMesh {
        let lods = lod_chain(
            &self.mesh,
            &mesh.simplify.lod_triangles,
            mesh.simplify.max_error,
        )
        .into_iter()
        .map(|l| l.mesh)
        .collect();
        ExtractedMesh {
            mesh: self.mesh.clone(),
            texture: Some(self.texture_image()),
            lods,
            report: self.report.clone(),
        }
    }
}
