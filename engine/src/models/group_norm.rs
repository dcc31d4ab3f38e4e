//! GroupNorm, and GroupNorm followed by SiLU, as the models call them: burn's `GroupNorm` on
//! every backend, one fused host op on the CPU backends (`group_norm_host.rs`).

use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;

#[cfg(feature = "cpu")]
use super::reshape::reshape;

/// `norm(x)`; `x` is `[batch, channels, ...]`.
pub fn group_norm<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    lowered(norm, x, false, cfg!(feature = "cpu"))
}

/// `silu(norm(x))`, the pre-activation of the ResNet blocks and the output heads.
pub fn group_norm_silu<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    lowered(norm, x, true, cfg!(feature = "cpu"))
}

/// [`group_norm`] / [`group_norm_silu`]; `host` lets the CPU backends take the fused op.
fn lowered<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    x: Tensor<B, D>,
    with_silu: bool,
    host: bool,
) -> Tensor<B, D> {
    #[cfg(feature = "cpu")]
    let x = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if host && x.dims()[1] == norm.num_channels => {
            let dims = x.dims();
            let spec = super::group_norm_host::GroupNormSpec {
                batch: dims[0],
                channels: dims[1],
                spatial: dims[2..].iter().product(),
                groups: norm.num_groups,
                epsilon: norm.epsilon,
                silu: with_silu,
            };
            let x3 = reshape(x, [spec.batch, spec.channels, spec.spatial]);
            match super::group_norm_host::try_group_norm(x3, gamma.val(), beta.val(), &spec) {
                Ok(out) => return reshape(out, dims),
                Err((x3, _, _)) => reshape(x3, dims),
            }
        }
        _ => x,
    };
    #[cfg(not(feature = "cpu"))]
    let _ = host;
    let out = norm.forward(x);
    if with_silu { silu(out) } else { out }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::tensor::{Distribution, Tensor};

    type B = Autodiff<NdArray>;

    fn max_abs_diff<const D: usize>(a: Tensor<NdArray, D>, b: Tensor<NdArray, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// The fused op equals burn's GroupNorm (+ burn's SiLU) in value and in the gradients of
    /// the input, the scale and the shift, on 4-D and 3-D inputs with non-trivial affine
    /// parameters and an input far from zero mean.
    #[test]
    fn host_op_matches_burn_forward_and_gradients() {
        let device = Default::default();
        // (shape, groups, SiLU, as a 3-D [batch, channels, h * w] input)
        let cases = [
            ([2, 8, 5, 3], 4, true, false),
            ([2, 8, 5, 3], 2, false, false),
            ([3, 6, 7, 1], 3, true, true),
            ([1, 4, 1, 1], 4, false, false),
        ];
        for (shape, groups, with_silu, three_d) in cases {
            let [batch, channels, h, w] = shape;
            let mut norm: GroupNorm<B> = GroupNormConfig::new(groups, channels)
                .with_epsilon(1e-6)
                .init(&device);
            let affine = |seed: f64| {
                let values: Vec<f32> = (0..channels)
                    .map(|c| ((c as f64 + seed) * 0.7).sin() as f32)
                    .collect();
                Param::from_tensor(Tensor::<B, 1>::from_floats(values.as_slice(), &device))
            };
            norm.gamma = Some(affine(1.0));
            norm.beta = Some(affine(2.0));
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n)
                .map(|i| 3.0 + 2.0 * (i as f32 * 0.31).sin())
                .collect();
            let weights: Vec<f32> = (0..n).map(|i| (i as f32 * 0.17).cos()).collect();
            let run = |host: bool| {
                let x = Tensor::<B, 1>::from_floats(x.as_slice(), &device)
                    .reshape(shape)
                    .require_grad();
                let out = if three_d {
                    let x3 = x.clone().reshape([batch, channels, h * w]);
                    lowered(&norm, x3, with_silu, host).reshape(shape)
                } else {
                    lowered(&norm, x.clone(), with_silu, host)
                };
                let out = out.flatten::<1>(0, 3);
                let weights = Tensor::<B, 1>::from_floats(weights.as_slice(), &device);
                let grads = (out.clone() * weights).sum().backward();
                let gamma = norm.gamma.as_ref().unwrap().val();
                let beta = norm.beta.as_ref().unwrap().val();
                (
                    out.inner(),
                    x.grad(&grads).unwrap().flatten::<1>(0, 3),
                    gamma.grad(&grads).unwrap(),
                    beta.grad(&grads).unwrap(),
                )
            };
            let (host, burn) = (run(true), run(false));
            let errors = [
                max_abs_diff(host.0, burn.0),
                max_abs_diff(host.1, burn.1),
                max_abs_diff(host.2, burn.2),
                max_abs_diff(host.3, burn.3),
            ];
            for (what, error) in ["output", "dx", "dgamma", "dbeta"].iter().zip(errors) {
                assert!(
                    error < 2e-5,
                    "{shape:?} groups {groups} silu {with_silu}: {what} off by {error}"
                );
            }
        }
    }

    #[test]
    fn only_the_cpu_backends_take_the_host_path() {
        use super::super::group_norm_host::{GroupNormSpec, try_group_norm};
        let spec = GroupNormSpec {
            batch: 1,
            channels: 2,
            spatial: 3,
            groups: 1,
            epsilon: 1e-5,
            silu: false,
        };
        fn takes<B: Backend>(spec: &GroupNormSpec) -> bool {
            let device = Default::default();
            let x = Tensor::<B, 3>::random([1, 2, 3], Distribution::Default, &device);
            let ones = Tensor::<B, 1>::ones([2], &device);
            try_group_norm(x, ones.clone(), ones, spec).is_ok()
        }
        assert!(takes::<NdArray>(&spec));
        assert!(takes::<B>(&spec));
        #[cfg(feature = "flex")]
        assert!(!takes::<burn::backend::Flex>(&spec));
    }
}
