//! Reshapes as the models call them: burn's `reshape` on every backend, without a copy on the
//! CPU backends when the tensor is row-major (`host_reshape.rs`).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// `x.reshape(shape)`.
pub fn reshape<B: Backend, const D1: usize, const D2: usize>(
    x: Tensor<B, D1>,
    shape: [usize; D2],
) -> Tensor<B, D2> {
    #[cfg(feature = "cpu")]
    let x = match super::host_reshape::try_reshape(x, shape) {
        Ok(out) => return out,
        Err(x) => x,
    };
    x.reshape(shape)
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, TensorPrimitive};
    use burn_ndarray::NdArrayTensor;

    type B = Autodiff<NdArray>;

    fn first_element(t: Tensor<NdArray, 3>) -> *const f32 {
        match t.into_primitive() {
            TensorPrimitive::Float(NdArrayTensor::F32(storage)) => storage.view().as_ptr(),
            _ => panic!("an f32 tensor"),
        }
    }

    /// The reshape shares the buffer, equals burn's in value and gradient, and a strided
    /// (transposed) input still reshapes correctly through burn's own path.
    #[test]
    fn reshapes_share_the_buffer_and_match_burn() {
        let device = Default::default();
        let x = Tensor::<NdArray, 4>::random([2, 3, 4, 5], Distribution::Default, &device);
        let flat: Tensor<NdArray, 3> = reshape(x.clone(), [6, 4, 5]);
        let base = match x.clone().into_primitive() {
            TensorPrimitive::Float(NdArrayTensor::F32(storage)) => storage.view().as_ptr(),
            _ => panic!("an f32 tensor"),
        };
        assert_eq!(first_element(flat.clone()), base, "no copy");
        assert_eq!(flat.to_data(), x.clone().reshape([6, 4, 5]).to_data());
        let strided = x.clone().swap_dims(1, 3);
        let want = strided.clone().reshape([2, 5, 12]).to_data();
        assert_eq!(reshape(strided, [2, 5, 12]).to_data(), want);

        let leaf = Tensor::<B, 4>::from_inner(x).require_grad();
        let c = Tensor::<B, 3>::random([6, 4, 5], Distribution::Default, &device);
        let grads = (reshape(leaf.clone(), [6, 4, 5]) * c.clone())
            .sum()
            .backward();
        let want = c.inner().reshape([2, 3, 4, 5]).to_data();
        assert_eq!(leaf.grad(&grads).unwrap().to_data(), want);
    }
}
