//! Real spherical harmonics up to degree 3, with 3DGS's constants and sign conventions:
//! colour = `sum_k basis_k(direction) * coefficient_k + 0.5`, clamped at 0.

use burn::tensor::{Tensor, backend::Backend};

/// Highest supported degree.
pub const MAX_DEGREE: usize = 3;
/// Degree-0 basis constant, `1 / (2 sqrt(pi))`.
pub const C0: f32 = 0.282_094_8;
const C1: f32 = 0.488_602_52;
const C2: [f32; 5] = [
    1.092_548_4,
    -1.092_548_4,
    0.315_391_57,
    -1.092_548_4,
    0.546_274_2,
];
const C3: [f32; 7] = [
    -0.590_043_6,
    2.890_611_4,
    -0.457_045_8,
    0.373_176_33,
    -0.457_045_8,
    1.445_305_7,
    -0.590_043_6,
];

/// Coefficients per channel for a degree.
pub fn coefficients(degree: usize) -> usize {
    (degree + 1) * (degree + 1)
}

/// The degree whose coefficient count is `k` (rounded down).
pub fn degree_of(k: usize) -> usize {
    (k as f32).sqrt() as usize - 1
}

/// The degree-0 coefficient that gives colour `rgb`.
pub fn rgb_to_dc(rgb: f32) -> f32 {
    (rgb - 0.5) / C0
}

/// Colour seen along unit `directions [V, N, 3]` (camera to Gaussian): `dc [N, 3]` and
/// `rest [N, k - 1, 3]` -> `[V, N, 3]`.
pub fn evaluate<B: Backend>(
    dc: Tensor<B, 2>,
    rest: Option<Tensor<B, 3>>,
    directions: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [views, n, _] = directions.dims();
    let mut color = dc.mul_scalar(C0).unsqueeze_dim::<3>(0).add_scalar(0.5); // [1, N, 3]
    if let Some(rest) = rest {
        let k = rest.dims()[1];
        let axis = |i: usize| directions.clone().narrow(2, i, 1); // [V, N, 1]
        let (x, y, z) = (axis(0), axis(1), axis(2));
        let (xx, yy, zz) = (
            x.clone() * x.clone(),
            y.clone() * y.clone(),
            z.clone() * z.clone(),
        );
        let mut basis: Vec<Tensor<B, 3>> = vec![
            y.clone().mul_scalar(-C1),
            z.clone().mul_scalar(C1),
            x.clone().mul_scalar(-C1),
        ];
        if k >= 8 {
            basis.extend([
                (x.clone() * y.clone()).mul_scalar(C2[0]),
                (y.clone() * z.clone()).mul_scalar(C2[1]),
                (zz.clone().mul_scalar(2.0) - xx.clone() - yy.clone()).mul_scalar(C2[2]),
                (x.clone() * z.clone()).mul_scalar(C2[3]),
                (xx.clone() - yy.clone()).mul_scalar(C2[4]),
            ]);
        }
        if k >= 15 {
            basis.extend([
                (y.clone() * (xx.clone().mul_scalar(3.0) - yy.clone())).mul_scalar(C3[0]),
                (x.clone() * y.clone() * z.clone()).mul_scalar(C3[1]),
                (y.clone() * (zz.clone().mul_scalar(4.0) - xx.clone() - yy.clone()))
                    .mul_scalar(C3[2]),
                (z.clone()
                    * (zz.clone().mul_scalar(2.0)
                        - xx.clone().mul_scalar(3.0)
                        - yy.clone().mul_scalar(3.0)))
                .mul_scalar(C3[3]),
                (x.clone() * (zz.mul_scalar(4.0) - xx.clone() - yy.clone())).mul_scalar(C3[4]),
                (z * (xx.clone() - yy.clone())).mul_scalar(C3[5]),
                (x * (xx - yy.mul_scalar(3.0))).mul_scalar(C3[6]),
            ]);
        }
        let basis = Tensor::cat(basis, 2).narrow(2, 0, k); // [V, N, k]
        // sum_k basis[v, n, k] * rest[n, k, c]
        let weighted = basis.unsqueeze_dim::<4>(3) * rest.unsqueeze_dim::<4>(0); // [V, N, k, 3]
        color = color + weighted.sum_dim(2).reshape([views, n, 3]);
    }
    color.expand([views, n, 3]).clamp_min(0.0)
}
