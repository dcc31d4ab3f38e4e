//! Matrix products as the models call them: burn's `matmul` on every backend, the host op on
//! the CPU backends (`host_matmul.rs`: operands read in place, AVX-512 kernels), which also
//! takes a weight shared by every batch index without first broadcasting it.

use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// `a @ b`; batch dims broadcast where one side is 1.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cpu")]
    let (a, b) = match super::host_matmul::try_matmul::<B, D, D, D>(a, b) {
        Ok(out) => return out,
        Err(operands) => operands,
    };
    a.matmul(b)
}

/// `x @ w` for a matrix `w` (`[k, n]`) applied to every leading index of `x` (`[.., m, k]`).
pub fn matmul_shared_right<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
) -> Tensor<B, D> {
    #[cfg(feature = "cpu")]
    let (x, w) = match super::host_matmul::try_matmul::<B, D, 2, D>(x, w) {
        Ok(out) => return out,
        Err(operands) => operands,
    };
    x.matmul(w.unsqueeze())
}

/// [`matmul_shared_right`] plus `bias` (`[n]`) on every output row; on the CPU backends the
/// bias is the GEMM's starting value instead of a pass of its own.
pub fn matmul_shared_right_bias<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let Some(bias) = bias else {
        return matmul_shared_right(x, w);
    };
    #[cfg(feature = "cpu")]
    let (x, w, bias) = match super::host_matmul::try_matmul_bias::<B, D, 2, D>(
        x,
        w,
        bias,
        super::host_matmul::BiasAxis::Columns,
    ) {
        Ok(out) => return out,
        Err(operands) => operands,
    };
    x.matmul(w.unsqueeze()) + bias.unsqueeze()
}

/// `w @ x` for a matrix `w` (`[m, k]`) applied to every leading index of `x` (`[.., k, n]`).
pub fn matmul_shared_left<B: Backend, const D: usize>(
    w: Tensor<B, 2>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    #[cfg(feature = "cpu")]
    let (w, x) = match super::host_matmul::try_matmul::<B, 2, D, D>(w, x) {
        Ok(out) => return out,
        Err(operands) => operands,
    };
    w.unsqueeze().matmul(x)
}

/// [`matmul_shared_left`] plus `bias` (`[m]`) on every output column (a convolution's
/// per-channel bias); fused into the GEMM on the CPU backends.
pub fn matmul_shared_left_bias<B: Backend, const D: usize>(
    w: Tensor<B, 2>,
    x: Tensor<B, D>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let Some(bias) = bias else {
        return matmul_shared_left(w, x);
    };
    #[cfg(feature = "cpu")]
    let (w, x, bias) = match super::host_matmul::try_matmul_bias::<B, 2, D, D>(
        w,
        x,
        bias,
        super::host_matmul::BiasAxis::Rows,
    ) {
        Ok(out) => return out,
        Err(operands) => operands,
    };
    let rows = bias.dims()[0];
    let mut dims = [1; D];
    dims[D - 2] = rows;
    w.unsqueeze().matmul(x) + bias.reshape(dims)
}

/// `layer(x)` (burn's `Linear`: `x @ weight + bias` over the last dim of `x`).
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    if !on_host::<B>() || D < 2 {
        return layer.forward(x);
    }
    let bias = layer.bias.as_ref().map(|bias| bias.val());
    matmul_shared_right_bias(x, layer.weight.val(), bias)
}

/// `layer(tokens)` with the output's two last dims swapped: `[batch, seq, d_in]` in,
/// `[batch, d_out, seq]` out, computed as `weight^T @ tokens^T` on the CPU backends so the
/// channels-first result is written in place instead of transposed afterwards.
pub fn linear_channels_first<B: Backend>(layer: &Linear<B>, tokens: Tensor<B, 3>) -> Tensor<B, 3> {
    if !on_host::<B>() {
        return layer.forward(tokens).swap_dims(1, 2);
    }
    let bias = layer.bias.as_ref().map(|bias| bias.val());
    matmul_shared_left_bias(layer.weight.val().transpose(), tokens.swap_dims(1, 2), bias)
}

/// Whether `B` is one of the CPU backends the host ops serve.
pub fn on_host<B: Backend>() -> bool {
    #[cfg(feature = "cpu")]
    {
        use super::host_dispatch::{Cpu, CpuAutodiff};
        use std::any::TypeId;
        let id = TypeId::of::<B>();
        id == TypeId::of::<Cpu>() || id == TypeId::of::<CpuAutodiff>()
    }
    #[cfg(not(feature = "cpu"))]
    false
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;

    type B = Autodiff<NdArray>;

    fn max_abs_diff<const D: usize>(a: Tensor<NdArray, D>, b: Tensor<NdArray, D>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).abs().max().into_scalar()
    }

    type Leaves = (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 2>);

    /// `host` and `reference` agree in value and in the gradient of every leaf of `leaves`.
    fn agree(
        leaves: &Leaves,
        host: impl Fn(Leaves) -> Tensor<B, 3>,
        reference: impl Fn(Leaves) -> Tensor<B, 3>,
    ) {
        let fresh = || {
            let (x, y, w, v) = leaves.clone();
            let leaf = |t: Tensor<B, 3>| t.detach().require_grad();
            (
                leaf(x),
                leaf(y),
                w.detach().require_grad(),
                v.detach().require_grad(),
            )
        };
        let (l1, l2) = (fresh(), fresh());
        let (out1, out2) = (host(l1.clone()), reference(l2.clone()));
        let c = out2.clone().detach().sin();
        let (g1, g2) = (
            (out1.clone() * c.clone()).sum().backward(),
            (out2.clone() * c).sum().backward(),
        );
        assert!(max_abs_diff(out1.inner(), out2.inner()) < 1e-5);
        let flat3 = |g: Option<Tensor<NdArray, 3>>| g.map(|g| g.reshape([-1]));
        let flat2 = |g: Option<Tensor<NdArray, 2>>| g.map(|g| g.reshape([-1]));
        let pairs: [(Option<Tensor<NdArray, 1>>, _); 4] = [
            (flat3(l1.0.grad(&g1)), flat3(l2.0.grad(&g2))),
            (flat3(l1.1.grad(&g1)), flat3(l2.1.grad(&g2))),
            (flat2(l1.2.grad(&g1)), flat2(l2.2.grad(&g2))),
            (flat2(l1.3.grad(&g1)), flat2(l2.3.grad(&g2))),
        ];
        assert!(pairs[0].0.is_some(), "x always takes part");
        for (i, (a, b)) in pairs.into_iter().enumerate() {
            assert_eq!(
                a.is_some(),
                b.is_some(),
                "leaf {i} has a gradient on one side only"
            );
            if let (Some(a), Some(b)) = (a, b) {
                assert!(max_abs_diff(a, b) < 1e-5, "leaf {i}");
            }
        }
    }

    /// Each entry point equals burn's own matmul in value and in both operands' gradients,
    /// on a transposed operand and on a shared weight (whose gradient sums over the batch).
    #[test]
    fn host_products_match_burn_in_value_and_gradients() {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        let leaves: Leaves = (
            Tensor::random([3, 5, 7], normal, &device),
            Tensor::random([3, 4, 7], normal, &device),
            Tensor::random([7, 6], normal, &device),
            Tensor::random([2, 5], normal, &device),
        );
        agree(
            &leaves,
            |(x, y, _, _)| matmul(x, y.swap_dims(1, 2)),
            |(x, y, _, _)| x.matmul(y.swap_dims(1, 2)),
        );
        agree(
            &leaves,
            |(x, _, w, _)| matmul_shared_right(x, w),
            |(x, _, w, _)| x.matmul(w.unsqueeze()),
        );
        agree(
            &leaves,
            |(x, _, _, v)| matmul_shared_left(v, x),
            |(x, _, _, v)| v.unsqueeze().matmul(x),
        );
        // The bias rides on the leaves' own values (a slice of `w` / `v`) so its gradient is
        // checked through theirs.
        agree(
            &leaves,
            |(x, _, w, _)| {
                let bias = w.clone().slice([0..1, 0..6]).reshape([6]);
                matmul_shared_right_bias(x, w, Some(bias))
            },
            |(x, _, w, _)| {
                let bias = w.clone().slice([0..1, 0..6]).reshape([1, 1, 6]);
                x.matmul(w.unsqueeze()) + bias
            },
        );
        agree(
            &leaves,
            |(x, _, _, v)| {
                let bias = v.clone().slice([0..2, 0..1]).reshape([2]);
                matmul_shared_left_bias(v, x, Some(bias))
            },
            |(x, _, _, v)| {
                let bias = v.clone().slice([0..2, 0..1]).reshape([1, 2, 1]);
                v.unsqueeze().matmul(x) + bias
            },
        );
    }

    /// `linear` and `linear_channels_first` equal burn's `Linear::forward`, with and without
    /// autodiff.
    #[test]
    fn linear_matches_burn_linear() {
        let device = Default::default();
        let layer = LinearConfig::new(7, 3).init::<NdArray>(&device);
        let x = Tensor::<NdArray, 3>::random([2, 5, 7], Distribution::Normal(0.0, 1.0), &device);
        let want = layer.forward(x.clone());
        assert!(max_abs_diff(linear(&layer, x.clone()), want.clone()) < 1e-5);
        let swapped = linear_channels_first(&layer, x.clone());
        assert!(max_abs_diff(swapped, want.clone().swap_dims(1, 2)) < 1e-5);
        let layer = LinearConfig::new(7, 3).init::<B>(&device);
        let x = Tensor::<B, 2>::random([4, 7], Distribution::Normal(0.0, 1.0), &device);
        let got = linear(&layer, x.clone()).inner();
        assert!(max_abs_diff(got, layer.forward(x).inner()) < 1e-5);
    }
}
