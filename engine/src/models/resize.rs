//! Bilinear resizing that every backend can differentiate: SDS resizes renders to the
//! prior's resolution and reward feedback to the CLIP tower's, both inside the graph.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// torch's `F.interpolate(mode="bilinear", align_corners=False)` (no antialias) as two
/// matrix products, `R_h x R_w^T`: differentiable on every backend (burn's `interpolate` has
/// no bilinear backward on ndarray) and cheap at render sizes.
///
/// # Shapes
/// - images: `[batch, channels, h, w]` -> `[batch, channels, size[0], size[1]]`
pub fn resize_bilinear<B: Backend>(images: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [_, _, h, w] = images.dims();
    let (device, dtype) = (images.device(), images.dtype());
    let matrix = |out: usize, input: usize| {
        Tensor::<B, 2>::from_data(
            TensorData::new(bilinear_weights(out, input), [out, input]),
            (&device, dtype),
        )
    };
    // [1, 1, w, w'] and [1, 1, h', h], broadcast over batch and channels.
    let rw_t = matrix(size[1], w).transpose().unsqueeze::<4>();
    let rh = matrix(size[0], h).unsqueeze::<4>();
    rh.matmul(images.matmul(rw_t))
}

/// Row `i` holds the weights of output sample `i` over the `input` samples: half-pixel
/// centres, `src = (i + 0.5) * input / out - 0.5` clamped at 0, linear between `floor(src)`
/// and the next sample (ATen's `area_pixel_compute_source_index`).
fn bilinear_weights(out: usize, input: usize) -> Vec<f32> {
    let scale = input as f32 / out as f32;
    let mut m = vec![0.0f32; out * input];
    for i in 0..out {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let lambda1 = src - i0 as f32;
        m[i * input + i0] += 1.0 - lambda1;
        m[i * input + i1] += lambda1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

    type B = NdArray<f32>;

    #[test]
    fn resize_matches_burns_bilinear() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([2, 3, 12, 9], Distribution::Default, &device);
        for size in [[8, 8], [32, 20], [12, 9], [5, 17]] {
            let ours = resize_bilinear(x.clone(), size);
            let options = InterpolateOptions {
                mode: InterpolateMode::Bilinear,
                align_corners: false,
            };
            let burns = interpolate(x.clone(), size, options);
            let err: f32 = (ours - burns).abs().max().into_scalar();
            assert!(err < 1e-5, "{size:?}: {err}");
        }
    }

    #[test]
    fn resize_weights_are_torchs() {
        // torch: F.interpolate(torch.arange(4.)[None, None, None], size=(1, 2), mode="bilinear")
        // = [0.5, 2.5]; upsampling 2 -> 4 gives [0, 0.25, 0.75, 1] of the second sample.
        assert_eq!(
            bilinear_weights(2, 4),
            [0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]
        );
        assert_eq!(
            bilinear_weights(4, 2),
            [1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0]
        );
    }
}
