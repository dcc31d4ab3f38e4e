//! Volume rendering of a [`Nerf`] (Max 1995; Mildenhall et al. 2020): stratified samples
//! between the ray's entry into and exit from the bounding sphere, alpha compositing front to
//! back, background behind. Differentiable end to end through burn's autodiff.

use burn::tensor::{Distribution, Tensor, TensorData, backend::Backend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::scene::camera::{Camera, Rays};
use crate::scene::nerf::{HashGridBackend, Nerf};

/// Sampling settings. Fields missing from a saved config take their defaults (configs written
/// before a field existed still load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeRendererConfig {
    /// Samples per ray inside the bounding sphere.
    pub num_samples_per_ray: usize,
    /// Rays per forward pass when rendering without gradients (memory bound).
    pub eval_chunk: usize,
    /// Sample points per differentiable pass while training. A step with more renders its
    /// views without gradients, takes the guidance's gradient with respect to the pixels, then
    /// re-renders the rays in chunks of this many samples to carry it into the field: the same
    /// gradient for one more forward pass, with the renderer's memory bounded by the chunk
    /// (each sample point keeps 1-4 KB for the backward, by the size of the hash grid).
    pub train_chunk_samples: usize,
}

impl Default for VolumeRendererConfig {
    fn default() -> Self {
        Self {
            num_samples_per_ray: 64,
            eval_chunk: 16384,
            train_chunk_samples: 2_097_152,
        }
    }
}

impl VolumeRendererConfig {
    /// The defaults: 64 samples per ray, 16,384 rays per evaluation pass, 2,097,152 sample
    /// points per differentiable pass.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `num_samples_per_ray`.
    pub fn with_num_samples_per_ray(self, num_samples_per_ray: usize) -> Self {
        Self {
            num_samples_per_ray,
            ..self
        }
    }

    /// With `eval_chunk`.
    pub fn with_eval_chunk(self, eval_chunk: usize) -> Self {
        Self { eval_chunk, ..self }
    }

    /// With `train_chunk_samples`.
    pub fn with_train_chunk_samples(self, train_chunk_samples: usize) -> Self {
        Self {
            train_chunk_samples,
            ..self
        }
    }
}

/// What a batch of rays sees.
#[derive(Debug, Clone)]
pub struct RenderOutput<B: Backend> {
    /// Colour composited over the background, `[rays, 3]`.
    pub rgb: Tensor<B, 2>,
    /// Accumulated opacity, `[rays, 1]`.
    pub opacity: Tensor<B, 2>,
    /// Expected termination distance (not normalised by opacity), `[rays, 1]`.
    pub depth: Tensor<B, 2>,
}

impl<B: Backend> RenderOutput<B> {
    /// Splits camera-major rays into images `[views, channels, height, width]`.
    pub fn images(tensor: Tensor<B, 2>, views: usize, height: usize, width: usize) -> Tensor<B, 4> {
        let [_, c] = tensor.dims();
        tensor
            .reshape([views, height, width, c])
            .permute([0, 3, 1, 2])
    }
}

/// Entry and exit distances of each ray through the sphere of `radius` about the origin;
/// rays that miss get an empty interval at 0.
pub fn sphere_bounds(rays: &Rays, radius: f32) -> (Vec<f32>, Vec<f32>) {
    let n = rays.len();
    let (mut near, mut far) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (o, d) in rays.origins.chunks(3).zip(rays.directions.chunks(3)) {
        let b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2];
        let c = o[0] * o[0] + o[1] * o[1] + o[2] * o[2] - radius * radius;
        let disc = b * b - c;
        let (t0, t1) = if disc > 0.0 {
            let s = disc.sqrt();
            ((-b - s).max(0.0), -b + s)
        } else {
            (0.0, 0.0)
        };
        if t1 > t0 {
            near.push(t0);
            far.push(t1);
        } else {
            near.push(0.0);
            far.push(0.0);
        }
    }
    (near, far)
}

/// The NeRF volume renderer.
#[derive(Debug, Clone)]
pub struct VolumeRenderer {
    config: VolumeRendererConfig,
}

impl VolumeRenderer {
    /// A renderer with these settings.
    pub fn new(config: VolumeRendererConfig) -> Self {
        Self { config }
    }

    /// Its settings.
    pub fn config(&self) -> &VolumeRendererConfig {
        &self.config
    }

    /// Renders rays. With `stratified`, each sample is jittered uniformly inside its bin (for
    /// training: every step sees new depths); otherwise samples sit at bin centres.
    pub fn render<B: HashGridBackend>(
        &self,
        nerf: &Nerf<B>,
        rays: &Rays,
        stratified: bool,
        device: &B::Device,
    ) -> RenderOutput<B> {
        let shape = [rays.len(), self.config.num_samples_per_ray];
        let offset = if stratified {
            Tensor::random(shape, Distribution::Uniform(0.0, 1.0), device)
        } else {
            Tensor::full(shape, 0.5, device)
        };
        self.render_with_offsets(nerf, rays, offset, device)
    }

    /// Renders rays with stratified jitter drawn on the host from `seed`, so the render is a
    /// pure function of the field, the rays and the seed (the backend's process-wide generator
    /// is not involved): a generation resumed from a checkpoint repeats it exactly.
    pub fn render_seeded<B: HashGridBackend>(
        &self,
        nerf: &Nerf<B>,
        rays: &Rays,
        seed: u64,
        device: &B::Device,
    ) -> RenderOutput<B> {
        let jitter = self.jitter(rays.len(), seed);
        self.render_jittered(nerf, rays, &jitter, device)
    }

    /// The jitter [`render_seeded`](Self::render_seeded) draws for `rays` rays from `seed`:
    /// `rays * num_samples_per_ray` offsets in `[0, 1)`, ray-major.
    pub fn jitter(&self, rays: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..rays * self.config.num_samples_per_ray)
            .map(|_| rng.random())
            .collect()
    }

    /// Renders rays with the given jitter (`rays * num_samples_per_ray` offsets, ray-major).
    pub fn render_jittered<B: HashGridBackend>(
        &self,
        nerf: &Nerf<B>,
        rays: &Rays,
        jitter: &[f32],
        device: &B::Device,
    ) -> RenderOutput<B> {
        let shape = [rays.len(), self.config.num_samples_per_ray];
        assert_eq!(jitter.len(), shape[0] * shape[1], "one offset per sample");
        let offset = Tensor::from_data(TensorData::new(jitter.to_vec(), shape), device);
        self.render_with_offsets(nerf, rays, offset, device)
    }

    /// Rays per differentiable pass: `train_chunk_samples / num_samples_per_ray`, at least 1.
    pub fn train_chunk_rays(&self) -> usize {
        (self.config.train_chunk_samples / self.config.num_samples_per_ray.max(1)).max(1)
    }

    /// `offset`: `[rays, samples]`, each sample's position inside its bin, in `[0, 1)`.
    fn render_with_offsets<B: HashGridBackend>(
        &self,
        nerf: &Nerf<B>,
        rays: &Rays,
        offset: Tensor<B, 2>,
        device: &B::Device,
    ) -> RenderOutput<B> {
        let n = rays.len();
        let s = self.config.num_samples_per_ray;
        let (near, far) = sphere_bounds(rays, nerf.radius());
        let tensor =
            |v: Vec<f32>, c: usize| Tensor::<B, 2>::from_data(TensorData::new(v, [n, c]), device);
        let origins = tensor(rays.origins.clone(), 3);
        let directions = tensor(rays.directions.clone(), 3);
        let near = tensor(near, 1);
        let span = tensor(far, 1) - near.clone();

        // 1. Sample depths [n, s]: bin k covers [k, k + 1) / s of the interval.
        let bins = Tensor::<B, 1>::from_data(
            TensorData::new((0..s).map(|k| k as f32).collect::<Vec<_>>(), [s]),
            device,
        )
        .reshape([1, s]);
        let step = span.clone().div_scalar(s as f32); // [n, 1]
        let t = near + (offset + bins) * step.clone();

        // 2. Query the field at the sample points.
        let points = origins.unsqueeze_dim::<3>(1)
            + directions.clone().unsqueeze_dim::<3>(1) * t.clone().unsqueeze_dim::<3>(2);
        let field = nerf.query(points.reshape([n * s, 3]));
        let density = field.density.reshape([n, s]);
        let albedo = field.albedo.reshape([n, s, 3]);

        // 3. Segment lengths: distance to the next sample, the last one to the bin's end.
        let deltas = if s > 1 {
            let next = t.clone().narrow(1, 1, s - 1) - t.clone().narrow(1, 0, s - 1);
            Tensor::cat(vec![next, step.clone()], 1)
        } else {
            step
        };

        // 4. Alpha compositing: w_i = T_i (1 - exp(-sigma_i delta_i)),
        //    T_i = exp(-sum_{j<i} sigma_j delta_j).
        let optical = density * deltas;
        let before = optical.clone().cumsum(1) - optical.clone();
        let weights = before.neg().exp() * (optical.neg().exp().neg() + 1.0); // [n, s]
        let opacity = weights.clone().sum_dim(1); // [n, 1]
        let depth = (weights.clone() * t).sum_dim(1);
        let rgb = (albedo * weights.unsqueeze_dim::<3>(2))
            .sum_dim(1)
            .reshape([n, 3]);
        let background = match &rays.backgrounds {
            Some(colors) => tensor(colors.clone(), 3),
            None => nerf.background.forward(directions),
        };
        let rgb = rgb + background * (opacity.clone().neg() + 1.0);
        RenderOutput {
            rgb,
            opacity,
            depth,
        }
    }

    /// Renders whole cameras without jitter, in chunks of `eval_chunk` rays, and returns
    /// images `[views, 3, height, width]` (all cameras must share one size).
    pub fn render_images<B: HashGridBackend>(
        &self,
        nerf: &Nerf<B>,
        cameras: &[Camera],
        device: &B::Device,
    ) -> RenderOutput<B> {
        let rays = Rays::of_cameras(cameras);
        let chunk = self.config.eval_chunk.max(1);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < rays.len() {
            let end = (start + chunk).min(rays.len());
            parts.push(self.render(nerf, &rays.range(start..end), false, device));
            start = end;
        }
        let cat =
            |f: fn(&RenderOutput<B>) -> Tensor<B, 2>| Tensor::cat(parts.iter().map(f).collect(), 0);
        RenderOutput {
            rgb: cat(|o| o.rgb.clone()),
            opacity: cat(|o| o.opacity.clone()),
            depth: cat(|o| o.depth.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::nerf::{BackgroundConfig, BackgroundKind, HashGridConfig, NerfConfig};
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn sphere_bounds_hit_and_miss() {
        let rays = Rays {
            origins: vec![0.0, 0.0, 3.0, 0.0, 2.0, 3.0, 0.0, 0.0, 0.0],
            directions: vec![0.0, 0.0, -1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0],
            backgrounds: None,
        };
        let (near, far) = sphere_bounds(&rays, 1.0);
        assert_eq!((near[0], far[0]), (2.0, 4.0));
        assert_eq!((near[1], far[1]), (0.0, 0.0)); // passes above the sphere
        assert_eq!((near[2], far[2]), (0.0, 1.0)); // starts inside
    }

    /// A very dense blob is opaque at its surface; rays that miss show the background.
    #[test]
    fn opaque_blob_and_background() {
        let device = Default::default();
        let grid = HashGridConfig::new()
            .with_n_levels(2)
            .with_log2_hashmap_size(8)
            .with_max_resolution(16);
        let solid = BackgroundConfig::new()
            .with_kind(BackgroundKind::Solid)
            .with_color([0.2, 0.4, 0.6]);
        let renderer =
            VolumeRenderer::new(VolumeRendererConfig::new().with_num_samples_per_ray(128));
        let cam = Camera::orbit(0.0, 0.0, 3.0, 40.0, 4, 4).unwrap();

        let dense = NerfConfig::new()
            .with_encoding(grid)
            .with_background(solid)
            .with_density_blob_scale(500.0)
            .with_density_blob_std(0.5)
            .init::<B>(&device);
        let out = renderer.render_images(&dense, std::slice::from_ref(&cam), &device);
        let opacity: Vec<f32> = out.opacity.into_data().to_vec().unwrap();
        let depth: Vec<f32> = out.depth.into_data().to_vec().unwrap();
        let rgb: Vec<f32> = out.rgb.into_data().to_vec().unwrap();
        // Centre pixels hit the blob (dense where r < std = 0.5): opaque, and the expected depth
        // is where the ray enters that ball.
        let (entry, _) = sphere_bounds(&cam.rays(), 0.5);
        for p in [5, 6, 9, 10] {
            assert!(opacity[p] > 0.999, "opacity {}", opacity[p]);
            assert!(
                (depth[p] - entry[p]).abs() < 0.08,
                "depth {} vs {}",
                depth[p],
                entry[p]
            );
        }
        // The corner rays miss the sphere entirely and show the background.
        assert!(opacity[0] < 1e-6);
        assert!((rgb[0] - 0.2).abs() < 1e-5 && (rgb[2] - 0.6).abs() < 1e-5);

        // Per-ray colours (random_aug) replace the background where rays miss, and only there.
        let mut rays = cam.rays();
        rays.backgrounds = Some([0.9, 0.1, 0.3].repeat(rays.len()));
        let jitter = vec![0.5; rays.len() * 128];
        let plain = renderer.render_jittered(&dense, &cam.rays(), &jitter, &device);
        let plain: Vec<f32> = plain.rgb.into_data().to_vec().unwrap();
        let swapped = renderer.render_jittered(&dense, &rays, &jitter, &device);
        let swapped: Vec<f32> = swapped.rgb.into_data().to_vec().unwrap();
        assert!((swapped[0] - 0.9).abs() < 1e-5 && (swapped[2] - 0.3).abs() < 1e-5);
        for p in [5, 6, 9, 10] {
            for c in 0..3 {
                assert!(
                    (swapped[3 * p + c] - plain[3 * p + c]).abs() < 1e-3,
                    "pixel {p}"
                );
            }
        }
    }
}
