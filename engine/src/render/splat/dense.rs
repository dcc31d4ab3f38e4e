//! The rasteriser as dense tensor ops: every pixel against every Gaussian, `O(pixels x N)`
//! memory. Only the reference the custom op is tested against (forward and, through burn's
//! autodiff, gradients); it follows the same rules: depth order with index ties, alpha capped
//! at [`ALPHA_MAX`], contributions under [`ALPHA_MIN`] skipped, stop before transmittance
//! falls under [`T_MIN`].

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::{
    ALPHA_MAX, ALPHA_MIN, CONIC_A, CONIC_B, CONIC_C, DEPTH, MEAN_X, MEAN_Y, OPACITY, PACK, RED,
    RasterSize, T_MIN, footprint_radius,
};

/// `[views, N, PACK]` -> `[views * height * width, OUT]`, like [`super::rasterize`](fn@super::rasterize).
pub fn rasterize_dense<B: Backend>(gaussians: Tensor<B, 3>, size: RasterSize) -> Tensor<B, 2> {
    let device = gaussians.device();
    let [views, n, _] = gaussians.dims();
    let host: Vec<f32> = gaussians
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("float tensor data");
    let pixels = size.pixels();
    let xs: Vec<f32> = (0..pixels).map(|p| (p % size.width) as f32 + 0.5).collect();
    let ys: Vec<f32> = (0..pixels).map(|p| (p / size.width) as f32 + 0.5).collect();
    let column = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [pixels]), &device);
    let (px, py) = (
        column(xs).reshape([pixels, 1]),
        column(ys).reshape([pixels, 1]),
    );

    let mut out = Vec::with_capacity(views);
    for v in 0..views {
        let view = &host[v * n * PACK..(v + 1) * n * PACK];
        // Only Gaussians that can contribute, nearest first.
        let mut order: Vec<usize> = (0..n)
            .filter(|&i| footprint_radius(&view[i * PACK..][..PACK]).is_some())
            .collect();
        order.sort_by(|&a, &b| {
            view[a * PACK + DEPTH]
                .total_cmp(&view[b * PACK + DEPTH])
                .then(a.cmp(&b))
        });
        if order.is_empty() {
            let zeros = Tensor::<B, 2>::zeros([pixels, 5], &device);
            out.push(zeros);
            continue;
        }
        let m = order.len();
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(order.iter().map(|&i| i as i64).collect::<Vec<_>>(), [m]),
            &device,
        );
        let g = gaussians
            .clone()
            .narrow(0, v, 1)
            .reshape([n, PACK])
            .select(0, index); // [m, PACK]
        let col = |c: usize| g.clone().narrow(1, c, 1).reshape([1, m]);
        let dx = col(MEAN_X) - px.clone(); // [pixels, m]
        let dy = col(MEAN_Y) - py.clone();
        let power = (col(CONIC_A) * dx.clone() * dx.clone()
            + col(CONIC_C) * dy.clone() * dy.clone())
        .mul_scalar(-0.5)
            - col(CONIC_B) * dx * dy;
        let alpha = (col(OPACITY) * power.clone().exp()).clamp_max(ALPHA_MAX);
        let keep = power.lower_equal_elem(0.0).float()
            * alpha.clone().greater_equal_elem(ALPHA_MIN).float();
        let alpha = alpha * keep;
        // Stop where the transmittance after a Gaussian would fall under T_MIN.
        let after = alpha.clone().neg().add_scalar(1.0).log().cumsum(1).exp();
        let alpha = alpha * after.greater_equal_elem(T_MIN).float();
        let log_keep = alpha.clone().neg().add_scalar(1.0).log();
        let cum = log_keep.clone().cumsum(1);
        let before = (cum.clone() - log_keep).exp();
        let weights = alpha * before; // [pixels, m]
        let features = Tensor::cat(vec![g.clone().narrow(1, RED, 3), g.narrow(1, DEPTH, 1)], 1); // [m, 4]
        let color_depth = weights.matmul(features);
        let opacity = cum.narrow(1, m - 1, 1).exp().neg().add_scalar(1.0);
        out.push(Tensor::cat(vec![color_depth, opacity], 1));
    }
    Tensor::cat(out, 0)
}
