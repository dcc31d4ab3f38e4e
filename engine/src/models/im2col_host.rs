//! im2col on the host for burn-ndarray, as one op with a hand-written backward (col2im).
//!
//! [`super::conv::conv2d_im2col`] builds the patch matrix from tensor ops: a pad, `kh * kw`
//! slices and a concatenation, each a full copy on ndarray (its slice copies element by
//! element), and autodiff's backward of every slice allocates a zero tensor the size of the
//! input. On the Tiny World UNet that costs about as much as the matrix products themselves.
//! Here the patch matrix is written in one pass per (sample, channel) and the backward adds
//! the patch gradients back in one pass, both threaded over rayon.
//!
//! Reached through [`try_im2col`] by a run-time type check (`host_dispatch.rs`); any other
//! backend keeps the tensor-op lowering.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::host_dispatch::{Cpu, CpuAutodiff, from_host, same_type, to_host};

/// Sizes of one convolution's patch matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// `[batch, channels, h, w]` of the input.
    pub input: [usize; 4],
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub padding: [usize; 4],
}

impl Geometry {
    /// `[h_out, w_out]`.
    pub fn output(&self) -> [usize; 2] {
        let [_, _, h, w] = self.input;
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [top, left, bottom, right] = self.padding;
        [
            (h + top + bottom - kh) / sh + 1,
            (w + left + right - kw) / sw + 1,
        ]
    }

    /// `[batch, channels * kh * kw, h_out * w_out]`: rows ordered (channel, ki, kj), the order
    /// of a `[out, in, kh, kw]` weight flattened to `[out, in * kh * kw]`.
    pub fn cols(&self) -> [usize; 3] {
        let [batch, channels, _, _] = self.input;
        let [kh, kw] = self.kernel;
        let [h_out, w_out] = self.output();
        [batch, channels * kh * kw, h_out * w_out]
    }
}

/// The patch matrix of `x` (`[batch, channels, h, w]`, row-major), laid out as
/// [`Geometry::cols`]; zero where a window reaches into the padding.
pub fn im2col(x: &[f32], g: &Geometry) -> Vec<f32> {
    let [_, _, h, w] = g.input;
    let [kh, kw] = g.kernel;
    let [h_out, w_out] = g.output();
    let mut cols = vec![0.0f32; g.cols().iter().product()];
    let plane = h * w;
    let block = kh * kw * h_out * w_out;
    // One (sample, channel) plane in, its kh * kw rows of the patch matrix out.
    cols.par_chunks_mut(block)
        .zip(x.par_chunks(plane))
        .for_each(|(rows, image)| {
            for ki in 0..kh {
                for kj in 0..kw {
                    let row = &mut rows[(ki * kw + kj) * h_out * w_out..][..h_out * w_out];
                    for_each_span(g, ki, kj, |out_start, in_start, len| {
                        row[out_start..out_start + len]
                            .copy_from_slice(&image[in_start..in_start + len]);
                    });
                }
            }
        });
    cols
}

/// The gradient of [`im2col`]: each patch entry's gradient added back to the input pixel it
/// was read from (pixels under several windows sum them).
pub fn col2im(grad_cols: &[f32], g: &Geometry) -> Vec<f32> {
    let [_, _, h, w] = g.input;
    let [kh, kw] = g.kernel;
    let [h_out, w_out] = g.output();
    let mut grad = vec![0.0f32; g.input.iter().product()];
    let plane = h * w;
    let block = kh * kw * h_out * w_out;
    grad.par_chunks_mut(plane)
        .zip(grad_cols.par_chunks(block))
        .for_each(|(image, rows)| {
            for ki in 0..kh {
                for kj in 0..kw {
                    let row = &rows[(ki * kw + kj) * h_out * w_out..][..h_out * w_out];
                    for_each_span(g, ki, kj, |out_start, in_start, len| {
                        let pixels = &mut image[in_start..in_start + len];
                        for (pixel, &grad) in pixels.iter_mut().zip(&row[out_start..][..len]) {
                            *pixel += grad;
                        }
                    });
                }
            }
        });
    grad
}

/// Calls `f(first output pixel, first input pixel, length)` for every run of output pixels
/// whose tap `(ki, kj)` lands inside the image, consecutive in both (taps in the padding read
/// zero and are skipped). With a horizontal stride of 1 a run is the valid part of an output
/// row, so it is copied as one slice; otherwise each pixel is its own run.
#[inline]
fn for_each_span(g: &Geometry, ki: usize, kj: usize, mut f: impl FnMut(usize, usize, usize)) {
    let [_, _, h, w] = g.input;
    let [sh, sw] = g.stride;
    let [top, left, _, _] = g.padding;
    let [h_out, w_out] = g.output();
    // Output columns whose input column `oj * sw + kj - left` lies in 0..w.
    let first = left.saturating_sub(kj).div_ceil(sw);
    let last = (w + left).saturating_sub(kj).div_ceil(sw).min(w_out);
    for oi in 0..h_out {
        // Input row of this tap, in padded coordinates minus the padding.
        let Some(i) = (oi * sh + ki).checked_sub(top).filter(|&i| i < h) else {
            continue;
        };
        if sw == 1 {
            if first < last {
                f(oi * w_out + first, i * w + first + kj - left, last - first);
            }
        } else {
            for oj in first..last {
                f(oi * w_out + oj, i * w + oj * sw + kj - left, 1);
            }
        }
    }
}

/// [`im2col`] on a CPU tensor: `[batch, channels, h, w]` -> [`Geometry::cols`].
fn im2col_tensor(x: Tensor<Cpu, 4>, g: &Geometry) -> Tensor<Cpu, 3> {
    let device = x.device();
    from_host(im2col(&to_host(x), g), g.cols(), &device)
}

#[derive(Debug)]
struct Im2colBackward;

impl Backward<Cpu, 1> for Im2colBackward {
    type State = Geometry;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let g = ops.state;
        let grad: Tensor<Cpu, 3> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<Cpu>(&ops.node)));
        if let Some(parent) = &ops.parents[0] {
            let device = grad.device();
            let dx = from_host(col2im(&to_host(grad), &g), g.input, &device);
            grads.register::<Cpu>(parent.id, dx.into_primitive().tensor());
        }
    }
}

/// [`im2col`] on an autodiff CPU tensor, differentiable in `x`.
fn im2col_autodiff(x: Tensor<CpuAutodiff, 4>, g: &Geometry) -> Tensor<CpuAutodiff, 3> {
    let x: FloatTensor<CpuAutodiff> = x.into_primitive().tensor();
    let forward = |inner: FloatTensor<Cpu>| {
        let inner = Tensor::<Cpu, 4>::from_primitive(TensorPrimitive::Float(inner));
        im2col_tensor(inner, g).into_primitive().tensor()
    };
    let out = match Im2colBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(*g, forward(x.primitive)),
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The patch matrix of `x` through the host op when `B` is one of the CPU backends it serves;
/// `x` back otherwise.
pub fn try_im2col<B: Backend>(x: Tensor<B, 4>, g: &Geometry) -> Result<Tensor<B, 3>, Tensor<B, 4>> {
    let x = match same_type::<Tensor<B, 4>, Tensor<CpuAutodiff, 4>>(x) {
        Ok(x) => return Ok(same_type(im2col_autodiff(x, g)).unwrap_or_else(|_| unreachable!())),
        Err(x) => x,
    };
    match same_type::<Tensor<B, 4>, Tensor<Cpu, 4>>(x) {
        Ok(x) => Ok(same_type(im2col_tensor(x, g)).unwrap_or_else(|_| unreachable!())),
        Err(x) => Err(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference: the value under tap (ki, kj) of output pixel (oi, oj).
    fn reference(x: &[f32], g: &Geometry) -> Vec<f32> {
        let [batch, channels, h, w] = g.input;
        let [kh, kw] = g.kernel;
        let [sh, sw] = g.stride;
        let [top, left, _, _] = g.padding;
        let [h_out, w_out] = g.output();
        let mut cols = Vec::new();
        for b in 0..batch {
            for c in 0..channels {
                for ki in 0..kh {
                    for kj in 0..kw {
                        for oi in 0..h_out {
                            for oj in 0..w_out {
                                let i = (oi * sh + ki) as isize - top as isize;
                                let j = (oj * sw + kj) as isize - left as isize;
                                let inside =
                                    i >= 0 && j >= 0 && (i as usize) < h && (j as usize) < w;
                                cols.push(if inside {
                                    x[((b * channels + c) * h + i as usize) * w + j as usize]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
            }
        }
        cols
    }

    #[test]
    fn im2col_matches_the_definition_and_col2im_is_its_adjoint() {
        let cases = [
            ([2, 3, 7, 6], [3, 3], [1, 1], [1, 1, 1, 1]),
            ([1, 2, 8, 8], [3, 3], [2, 2], [0, 0, 1, 1]),
            ([2, 1, 5, 9], [3, 2], [2, 1], [0, 1, 2, 0]),
            ([1, 4, 4, 4], [1, 1], [1, 1], [0, 0, 0, 0]),
        ];
        for (input, kernel, stride, padding) in cases {
            let g = Geometry {
                input,
                kernel,
                stride,
                padding,
            };
            let n: usize = input.iter().product();
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let cols = im2col(&x, &g);
            assert_eq!(cols, reference(&x, &g), "{g:?}");
            // <im2col(x), y> = <x, col2im(y)> for any y: col2im is the transpose.
            let y: Vec<f32> = (0..cols.len()).map(|i| (i as f32 * 0.11).cos()).collect();
            let lhs: f64 = cols.iter().zip(&y).map(|(a, b)| (*a * *b) as f64).sum();
            let back = col2im(&y, &g);
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (*a * *b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn only_the_cpu_backends_take_the_host_path() {
        let device = Default::default();
        let g = Geometry {
            input: [1, 1, 3, 3],
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1, 1, 1],
        };
        let x = Tensor::<Cpu, 4>::ones([1, 1, 3, 3], &device);
        assert_eq!(try_im2col(x, &g).ok().map(|c| c.dims()), Some([1, 9, 9]));
        let x = Tensor::<CpuAutodiff, 4>::ones([1, 1, 3, 3], &device);
        assert!(try_im2col(x, &g).is_ok());
        #[cfg(feature = "flex")]
        {
            let x = Tensor::<burn::backend::Flex, 4>::ones([1, 1, 3, 3], &Default::default());
            assert!(try_im2col(x, &g).is_err());
        }
    }
}
