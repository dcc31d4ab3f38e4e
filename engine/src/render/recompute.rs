//! Training renders too large to keep for the backward: render every ray without gradients,
//! let the loss find its gradient with respect to the pixels, then render the rays again in
//! chunks with gradients and backpropagate each chunk's share. A ray's colour depends on its
//! own samples only, so the sum over chunks is the gradient of the whole render; the price is
//! one more forward pass, and the memory kept is one chunk's instead of every sample's.

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use super::volume::VolumeRenderer;
use crate::scene::camera::Rays;
use crate::scene::nerf::{HashGridBackend, Nerf};

/// A render whose backward is deferred: `rgb` is a leaf of the autodiff graph, `[rays, 3]`.
#[derive(Debug, Clone)]
pub struct DeferredRender<B: AutodiffBackend> {
    /// The colours, tracked as a leaf so the loss's gradient stops at them.
    pub rgb: Tensor<B, 2>,
    rays: Rays,
    jitter: Vec<f32>,
}

impl VolumeRenderer {
    /// Renders `rays` with `jitter` without gradients, in chunks of
    /// [`train_chunk_rays`](Self::train_chunk_rays), as a deferred render.
    pub fn render_deferred<B>(
        &self,
        nerf: &Nerf<B>,
        rays: Rays,
        jitter: Vec<f32>,
        device: &B::Device,
    ) -> DeferredRender<B>
    where
        B: AutodiffBackend + HashGridBackend,
        B::InnerBackend: HashGridBackend,
    {
        let inner = nerf.valid();
        let parts = self
            .chunks(&rays, &jitter)
            .map(|(part, jitter)| self.render_jittered(&inner, &part, jitter, device).rgb);
        let rgb = Tensor::cat(parts.collect(), 0);
        DeferredRender {
            rgb: Tensor::from_inner(rgb).require_grad(),
            rays,
            jitter,
        }
    }

    /// Carries `rgb_grad` (`[rays, 3]`, the loss's gradient with respect to
    /// `deferred.rgb`) into the field chunk by chunk; `each` receives every chunk's gradients.
    pub fn backward_deferred<B>(
        &self,
        nerf: &Nerf<B>,
        deferred: &DeferredRender<B>,
        rgb_grad: Tensor<B::InnerBackend, 2>,
        device: &B::Device,
        mut each: impl FnMut(B::Gradients),
    ) where
        B: AutodiffBackend + HashGridBackend,
    {
        let mut start = 0;
        for (part, jitter) in self.chunks(&deferred.rays, &deferred.jitter) {
            let len = part.len();
            let out = self.render_jittered(nerf, &part, jitter, device);
            let upstream = Tensor::from_inner(rgb_grad.clone().narrow(0, start, len));
            // d/dparams of sum(rgb * upstream) = upstream^T d rgb / d params.
            each((out.rgb * upstream).sum().backward());
            start += len;
        }
    }

    /// Consecutive ray chunks of `train_chunk_rays` and their jitter.
    fn chunks<'a>(
        &self,
        rays: &'a Rays,
        jitter: &'a [f32],
    ) -> impl Iterator<Item = (Rays, &'a [f32])> + 'a {
        let chunk = self.train_chunk_rays();
        let samples = self.config().num_samples_per_ray;
        (0..rays.len()).step_by(chunk).map(move |start| {
            let end = (start + chunk).min(rays.len());
            (
                rays.range(start..end),
                &jitter[start * samples..end * samples],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::VolumeRendererConfig;
    use crate::scene::camera::Camera;
    use crate::scene::nerf::{HashGridConfig, NerfConfig};
    use burn::backend::{Autodiff, NdArray};
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Distribution;

    type B = Autodiff<NdArray<f32>>;

    /// Every parameter's gradient in `grads`, in visiting order (zeros where it has none).
    fn gradients(nerf: &Nerf<B>, grads: &<B as AutodiffBackend>::Gradients) -> Vec<Vec<f32>> {
        struct Collect<'a>(&'a <B as AutodiffBackend>::Gradients, Vec<Vec<f32>>);
        impl ModuleVisitor<B> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let grad = param.val().grad(self.0);
                let grad = grad.map_or_else(
                    || vec![0.0; param.val().shape().num_elements()],
                    |g| g.into_data().to_vec().unwrap(),
                );
                self.1.push(grad);
            }
        }
        let mut collect = Collect(grads, Vec::new());
        nerf.visit(&mut collect);
        collect.1
    }

    /// The deferred render equals the direct one, and its chunked backward gives every
    /// parameter the gradient of one backward through the whole render.
    #[test]
    fn chunked_backward_equals_one_pass() {
        let device = Default::default();
        let nerf = NerfConfig::new()
            .with_encoding(
                HashGridConfig::new()
                    .with_n_levels(4)
                    .with_log2_hashmap_size(10)
                    .with_max_resolution(64)
                    .with_init_scale(0.3),
            )
            .init::<B>(&device);
        // 100 rays x 8 samples in chunks of 24 rays: four full chunks and a short one.
        let renderer = VolumeRenderer::new(
            VolumeRendererConfig::new()
                .with_num_samples_per_ray(8)
                .with_train_chunk_samples(24 * 8),
        );
        let rays = Camera::orbit(30.0, 15.0, 2.5, 45.0, 10, 10).unwrap().rays();
        let jitter = renderer.jitter(rays.len(), 7);
        let weights = Tensor::<B, 2>::random([100, 3], Distribution::Normal(0.0, 1.0), &device);

        let direct = renderer.render_jittered(&nerf, &rays, &jitter, &device).rgb;
        let expected = gradients(&nerf, &(direct.clone() * weights.clone()).sum().backward());

        let deferred = renderer.render_deferred(&nerf, rays, jitter, &device);
        let forward = (direct.into_data().to_vec::<f32>().unwrap().iter())
            .zip(deferred.rgb.clone().into_data().to_vec::<f32>().unwrap())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(forward < 1e-6, "deferred render differs by {forward}");
        let loss = (deferred.rgb.clone() * weights).sum();
        let rgb_grad = deferred.rgb.grad(&loss.backward()).unwrap();
        let mut chunks = 0;
        let mut total: Option<Vec<Vec<f32>>> = None;
        renderer.backward_deferred(&nerf, &deferred, rgb_grad, &device, |grads| {
            chunks += 1;
            let part = gradients(&nerf, &grads);
            total = Some(match total.take() {
                None => part,
                Some(sum) => (sum.iter().zip(&part))
                    .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect())
                    .collect(),
            });
        });
        assert_eq!(chunks, 5);
        for (i, (want, got)) in expected.iter().zip(total.unwrap()).enumerate() {
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = want
                .iter()
                .zip(&got)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(scale > 0.0, "parameter {i} has no gradient");
            assert!(err <= 1e-5 * scale, "parameter {i}: error {err} of {scale}");
        }
    }
}
