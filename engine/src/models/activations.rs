//! Activations whose gradients burn does not give exactly (transformers' `activations.py`).

use burn::tensor::{Tensor, backend::Backend};

/// Exact (erf) GELU, `x * (1 + erf(x / sqrt 2)) / 2`, from primitives: burn's `gelu` has the
/// same forward but differentiates the tanh approximation (burn-backend's `gelu_backward`),
/// which put ~4e-5 of error into ImageReward's image gradients (torch's own f32 error: 2e-7).
/// Used where a gradient flows through it (rewards); forward-only paths keep burn's kernel.
pub fn gelu_exact<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cdf = (x.clone() * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0;
    x * cdf * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::TensorData;

    type A = Autodiff<NdArray>;

    #[test]
    fn value_and_gradient_are_the_erf_gelus() {
        let xs = [-3.0f32, -1.2, -0.3, 0.0, 0.4, 1.1, 2.5];
        let x = Tensor::<A, 1>::from_data(TensorData::from(xs), &Default::default()).require_grad();
        let y = gelu_exact(x.clone());
        let grads = y.clone().sum().backward();
        let values = y.into_data().to_vec::<f32>().unwrap();
        let slopes = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        for ((&x, v), g) in xs.iter().zip(values).zip(slopes) {
            let x = x as f64;
            let phi = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            assert!((v as f64 - x * cdf).abs() < 1e-6, "gelu({x})");
            assert!(
                (g as f64 - (cdf + x * phi)).abs() < 1e-6,
                "gelu'({x}) = {g}"
            );
        }
    }
}
