//! [`Conv2d`]: PyTorch's `nn.Conv2d` (groups 1, dilation 1), the layer every UNet, VAE and
//! CLIP-vision convolution uses.
//!
//! It holds the same parameters as `burn::nn::conv::Conv2d` (`weight` `[out, in, kh, kw]`,
//! optional `bias` `[out]`, module type name `Conv2d`), so checkpoints load exactly as before.
//! What differs is the forward on burn-ndarray: its 0.21 `conv2d` is a direct loop, and the
//! backward (a transposed convolution) takes 15x the forward on the Tiny World UNet; there the
//! convolution is lowered to one matrix product over unfolded patches (im2col), written with
//! tensor ops so autodiff differentiates it through the matmul. Other backends keep their own
//! kernels (see `lowers_to_matmul`).

use std::sync::atomic::{AtomicU8, Ordering};

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::tensor::module::conv2d;
use burn::tensor::ops::PaddedConvOptions;
use burn::tensor::{Tensor, backend::Backend};

use super::matmul::{matmul, matmul_shared_left_bias};
use super::reshape::reshape;

/// Settings of [`Conv2d`]; defaults are PyTorch's.
#[derive(Config, Debug, PartialEq)]
pub struct Conv2dConfig {
    /// `[in_channels, out_channels]`.
    pub channels: [usize; 2],
    /// `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// `[sh, sw]`.
    #[config(default = "[1, 1]")]
    pub stride: [usize; 2],
    /// Zero padding `[top, left, bottom, right]` (asymmetric for diffusers' `padding=0`
    /// downsampler, which pads only bottom and right).
    #[config(default = "[0, 0, 0, 0]")]
    pub padding: [usize; 4],
    /// Whether there is a `bias`.
    #[config(default = true)]
    pub bias: bool,
}

impl Conv2dConfig {
    /// Builds the layer with burn's `Conv2d` initialisation (Kaiming uniform, as PyTorch), so
    /// a randomly initialised model draws the same numbers as before this type existed.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Conv2d<B> {
        let [top, left, bottom, right] = self.padding;
        let conv = burn::nn::conv::Conv2dConfig::new(self.channels, self.kernel_size)
            .with_stride(self.stride)
            .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
            .with_bias(self.bias)
            .init(device);
        Conv2d {
            weight: conv.weight,
            bias: conv.bias,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

/// A 2-D convolution (groups 1, dilation 1).
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// `[out_channels, in_channels, kh, kw]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[out_channels]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// Zero padding `[top, left, bottom, right]`.
    pub padding: [usize; 4],
}

impl<B: Backend> Conv2d<B> {
    /// # Shapes
    /// - input: `[batch, in_channels, h, w]`
    /// - output: `[batch, out_channels, (h + top + bottom - kh) / sh + 1, (w + ...) / sw + 1]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let weight = self.weight.val();
        let bias = self.bias.as_ref().map(|b| b.val());
        if lowers_to_matmul::<B>(&input.device()) {
            conv2d_im2col(input, weight, bias, self.stride, self.padding)
        } else {
            let [top, left, bottom, right] = self.padding;
            let options =
                PaddedConvOptions::asymmetric(self.stride, [top, left], [bottom, right], [1, 1], 1);
            conv2d(input, weight, bias, options)
        }
    }
}

/// How [`Conv2d::forward`] computes the convolution; see [`set_conv_algorithm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvAlgorithm {
    /// im2col + matmul on burn-ndarray, the backend's own `conv2d` elsewhere.
    #[default]
    Auto,
    /// Always im2col + matmul.
    Im2col,
    /// Always the backend's own `conv2d`.
    Backend,
}

impl ConvAlgorithm {
    /// `auto`, `im2col` or `backend`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "im2col" => Some(Self::Im2col),
            "backend" => Some(Self::Backend),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Auto => 1,
            Self::Im2col => 2,
            Self::Backend => 3,
        }
    }
}

/// The process-wide choice; 0 until first read from `REWARDSDS_CONV`.
static CONV_ALGORITHM: AtomicU8 = AtomicU8::new(0);

/// Overrides [`ConvAlgorithm::Auto`] for the whole process, e.g. to time both paths on one
/// backend (`bench_unet --conv`). The environment variable `REWARDSDS_CONV` (`auto`,
/// `im2col`, `backend`) sets the starting value, so any test or example can be rerun on the
/// other path without a rebuild.
pub fn set_conv_algorithm(algorithm: ConvAlgorithm) {
    CONV_ALGORITHM.store(algorithm.code(), Ordering::Relaxed);
}

/// The current choice (see [`set_conv_algorithm`]).
pub fn conv_algorithm() -> ConvAlgorithm {
    let code = match CONV_ALGORITHM.load(Ordering::Relaxed) {
        0 => {
            let from_env = std::env::var("REWARDSDS_CONV").ok();
            let algorithm = match from_env.as_deref().map(ConvAlgorithm::from_name) {
                Some(Some(algorithm)) => algorithm,
                Some(None) => {
                    log::warn!(
                        "ignoring REWARDSDS_CONV={:?}: expected auto, im2col or backend",
                        from_env.unwrap_or_default()
                    );
                    ConvAlgorithm::Auto
                }
                None => ConvAlgorithm::Auto,
            };
            set_conv_algorithm(algorithm);
            algorithm.code()
        }
        code => code,
    };
    match code {
        2 => ConvAlgorithm::Im2col,
        3 => ConvAlgorithm::Backend,
        _ => ConvAlgorithm::Auto,
    }
}

/// Whether `B` convolves faster as im2col + matmul than with its own `conv2d`.
///
/// Auto: true for burn-ndarray only. There the Tiny World UNet runs 4x faster forward and 19x
/// faster forward + backward with im2col (docs/benchmarks.md). burn-flex's own im2col + gemm
/// convolution beats this lowering on flex (1.5-2x, same page). GPU backends keep their
/// implicit-GEMM kernels: the lowering was not measured there and costs memory traffic.
/// `name` is e.g. `ndarray` or `autodiff<ndarray>`; a string, because burn exposes no backend
/// identity that generic code can match on.
fn lowers_to_matmul<B: Backend>(device: &B::Device) -> bool {
    match conv_algorithm() {
        ConvAlgorithm::Im2col => true,
        ConvAlgorithm::Backend => false,
        ConvAlgorithm::Auto => B::name(device).contains("ndarray"),
    }
}

/// The convolution as a matrix product: each output pixel is the dot product of the weight
/// with the `in * kh * kw` input values under its window.
///
/// # Shapes
/// - x: `[batch, in, h, w]`, weight: `[out, in, kh, kw]`, bias: `[out]`
/// - output: `[batch, out, h_out, w_out]`
pub fn conv2d_im2col<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: [usize; 2],
    padding: [usize; 4],
) -> Tensor<B, 4> {
    lowered(x, weight, bias, stride, padding, cfg!(feature = "cpu"))
}

/// `weight` (`[out, in, kh, kw]`) applied to a per-sample patch matrix `cols`
/// (`[batch, in * kh * kw, h_out * w_out]`) as `[1, out, k] x [batch, k, h_out * w_out]`: one
/// GEMM per sample, no transpose of the output; plus `bias`, shaped to `out_dims`.
fn per_sample_gemm<B: Backend>(
    weight: Tensor<B, 4>,
    cols: Tensor<B, 3>,
    bias: Option<Tensor<B, 1>>,
    out_dims: [usize; 4],
) -> Tensor<B, 4> {
    let [_, c_out, _, _] = out_dims;
    let [_, k, _] = cols.dims();
    let out = matmul_shared_left_bias(reshape(weight, [c_out, k]), cols, bias);
    reshape(out, out_dims)
}

/// [`conv2d_im2col`]; `host` lets the CPU backends build the patch matrix on the host
/// (`im2col_host.rs`), else it is built from tensor ops on every backend.
fn lowered<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: [usize; 2],
    padding: [usize; 4],
    host: bool,
) -> Tensor<B, 4> {
    let [batch, c_in, h, w] = x.dims();
    let [c_out, c_in_w, kh, kw] = weight.dims();
    assert_eq!(
        c_in, c_in_w,
        "conv2d: input has {c_in} channels, weight {c_in_w}"
    );
    let [sh, sw] = stride;
    let [top, left, bottom, right] = padding;
    let (hp, wp) = (h + top + bottom, w + left + right);
    assert!(
        hp >= kh && wp >= kw,
        "conv2d: padded input {hp}x{wp} is smaller than the kernel {kh}x{kw}"
    );
    let h_out = (hp - kh) / sh + 1;
    let w_out = (wp - kw) / sw + 1;
    let k = c_in * kh * kw;

    if kh == 1 && kw == 1 && stride == [1, 1] && padding == [0; 4] {
        // Pointwise: the image already is the patch matrix, [batch, in, h * w].
        let cols = reshape(x, [batch, c_in, h * w]);
        return per_sample_gemm(weight, cols, bias, [batch, c_out, h, w]);
    }

    // The CPU backends build the patch matrix on the host in one pass (im2col_host.rs); with
    // autodiff, inside one op that does not keep it for the backward (conv_host.rs).
    #[cfg(feature = "cpu")]
    let (x, weight, bias) = if !host {
        (x, weight, bias)
    } else {
        let geometry = super::im2col_host::Geometry {
            input: [batch, c_in, h, w],
            kernel: [kh, kw],
            stride,
            padding,
        };
        let (x, weight, bias) = match super::conv_host::try_conv2d((x, weight, bias), &geometry) {
            Ok(out) => return out,
            Err(operands) => operands,
        };
        match super::im2col_host::try_im2col(x, &geometry) {
            Ok(cols) => return per_sample_gemm(weight, cols, bias, [batch, c_out, h_out, w_out]),
            Err(x) => (x, weight, bias),
        }
    };
    #[cfg(not(feature = "cpu"))]
    let _ = host;

    // [k, batch * h_out * w_out], one row per weight column
    let (cols, weight) = if stride == [kh, kw] && padding == [0; 4] && h % kh == 0 && w % kw == 0 {
        // Non-overlapping patches (CLIP's patch embedding): one permutation.
        // [in, kh, kw, batch, h_out, w_out], rows ordered (channel, ki, kj) like the weight
        let cols = x
            .reshape([batch, c_in, h_out, kh, w_out, kw])
            .permute([1, 3, 5, 0, 2, 4])
            .reshape([k, batch * h_out * w_out]);
        (cols, weight.reshape([c_out, k]))
    } else {
        // Tap (ki, kj) reads rows ki, ki + sh, ..., ki + sh (h_out - 1): a slice of sh * h_out
        // rows with every sh-th kept. Pad at least that far so every slice is in bounds.
        let bottom = bottom.max((kh - 1 + sh * h_out).saturating_sub(h + top));
        let right = right.max((kw - 1 + sw * w_out).saturating_sub(w + left));
        let x = if top + bottom + left + right > 0 {
            x.pad((left, right, top, bottom), 0.0)
        } else {
            x
        };
        // Channels first, so that each tap is [in, batch, h_out, w_out] and the taps stack
        // along the outermost axis: on ndarray every other layout costs extra copies of the
        // (kh * kw times larger) patch matrix.
        let x = x.swap_dims(0, 1);
        let mut taps = Vec::with_capacity(kh * kw);
        for ki in 0..kh {
            for kj in 0..kw {
                let tap =
                    x.clone()
                        .slice([0..c_in, 0..batch, ki..ki + sh * h_out, kj..kj + sw * w_out]);
                let tap = if sh == 1 && sw == 1 {
                    tap
                } else {
                    // Striding by reshape + slice: plain slices and reshapes have fast
                    // backward passes on every backend.
                    tap.reshape([c_in, batch, h_out, sh, w_out, sw])
                        .slice([0..c_in, 0..batch, 0..h_out, 0..1, 0..w_out, 0..1])
                        .reshape([c_in, batch, h_out, w_out])
                };
                taps.push(tap.unsqueeze::<5>());
            }
        }
        // [kh * kw, in, batch, h_out, w_out]: rows ordered (ki, kj, channel)
        let cols = Tensor::cat(taps, 0).reshape([k, batch * h_out * w_out]);
        let weight = weight.permute([0, 2, 3, 1]).reshape([c_out, k]);
        (cols, weight)
    };

    // [out, k] x [k, batch * h_out * w_out]: one GEMM for the whole batch
    let out = matmul(weight, cols);
    let out = match bias {
        Some(bias) => out + bias.reshape([c_out, 1]),
        None => out,
    };
    // [batch, out, h_out, w_out]
    out.reshape([c_out, batch, h_out, w_out]).swap_dims(0, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, TensorData};

    type B = Autodiff<NdArray<f32>>;

    /// Output and gradients (input, weight, bias) of one convolution.
    struct Run {
        out: TensorData,
        grads: [TensorData; 3],
    }

    fn run(
        path: Path,
        x: &Tensor<B, 4>,
        weight: &Tensor<B, 4>,
        bias: &Tensor<B, 1>,
        upstream: &Tensor<B, 4>,
        stride: [usize; 2],
        padding: [usize; 4],
    ) -> Run {
        let (x, weight, bias) = (
            x.clone().require_grad(),
            weight.clone().require_grad(),
            bias.clone().require_grad(),
        );
        let out = if path != Path::Burn {
            lowered(
                x.clone(),
                weight.clone(),
                Some(bias.clone()),
                stride,
                padding,
                path == Path::Host,
            )
        } else {
            let [top, left, bottom, right] = padding;
            let options =
                PaddedConvOptions::asymmetric(stride, [top, left], [bottom, right], [1, 1], 1);
            conv2d(x.clone(), weight.clone(), Some(bias.clone()), options)
        };
        // A random upstream gradient, so every output element's gradient path is checked.
        let grads = (out.clone() * upstream.clone()).sum().backward();
        let grad = |t: &Tensor<B, 4>| t.grad(&grads).unwrap().into_data();
        Run {
            out: out.into_data(),
            grads: [
                grad(&x),
                grad(&weight),
                bias.grad(&grads).unwrap().into_data(),
            ],
        }
    }

    /// Which convolution a test runs: burn's own, or the lowering with the patch matrix built
    /// on the host or from tensor ops.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Path {
        Burn,
        Host,
        TensorOps,
    }

    fn max_abs_diff(a: &TensorData, b: &TensorData) -> f32 {
        let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn im2col_matches_burn_conv2d_forward_and_gradients() {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        // (kernel, stride, padding [top, left, bottom, right], input h, w)
        let cases = [
            (1, 1, [0, 0, 0, 0], 6, 5),
            (1, 2, [0, 0, 0, 0], 6, 5),
            (3, 1, [0, 0, 0, 0], 7, 6),
            (3, 1, [1, 1, 1, 1], 7, 6),
            (3, 2, [1, 1, 1, 1], 7, 6),
            (3, 2, [0, 0, 0, 0], 8, 9),
            // diffusers' Downsample2D with padding=0: bottom/right only
            (3, 2, [0, 0, 1, 1], 8, 8),
            // non-overlapping patches (CLIP's patch embedding)
            (2, 2, [0, 0, 0, 0], 8, 6),
        ];
        for (kernel, s, padding, h, w) in cases {
            let (c_in, c_out, batch) = (3, 4, 2);
            let x = Tensor::<B, 4>::random([batch, c_in, h, w], normal, &device);
            let weight = Tensor::<B, 4>::random([c_out, c_in, kernel, kernel], normal, &device);
            let bias = Tensor::<B, 1>::random([c_out], normal, &device);
            let [top, left, bottom, right] = padding;
            let h_out = (h + top + bottom - kernel) / s + 1;
            let w_out = (w + left + right - kernel) / s + 1;
            let upstream = Tensor::<B, 4>::random([batch, c_out, h_out, w_out], normal, &device);
            let stride = [s, s];
            let reference = run(Path::Burn, &x, &weight, &bias, &upstream, stride, padding);
            for path in [Path::Host, Path::TensorOps] {
                let lowered = run(path, &x, &weight, &bias, &upstream, stride, padding);
                let case =
                    format!("{path:?}: kernel {kernel}, stride {s}, padding {padding:?}, {h}x{w}");
                assert_eq!(lowered.out.shape, reference.out.shape, "{case}");
                let err = max_abs_diff(&lowered.out, &reference.out);
                assert!(err < 1e-4, "{case}: output differs by {err}");
                for (name, (a, b)) in ["x", "weight", "bias"]
                    .iter()
                    .zip(lowered.grads.iter().zip(&reference.grads))
                {
                    assert_eq!(a.shape, b.shape, "{case}: d{name} shape");
                    let err = max_abs_diff(a, b);
                    assert!(err < 1e-4, "{case}: d{name} differs by {err}");
                }
            }
        }
    }

    #[test]
    fn module_forward_uses_the_configured_padding_and_stride() {
        let device = Default::default();
        let conv = Conv2dConfig::new([3, 5], [3, 3])
            .with_stride([2, 2])
            .with_padding([1, 1, 1, 1])
            .init::<NdArray<f32>>(&device);
        let x = Tensor::random([2, 3, 9, 8], Distribution::Default, &device);
        let reference = conv2d(
            x.clone(),
            conv.weight.val(),
            conv.bias.as_ref().map(|b| b.val()),
            PaddedConvOptions::asymmetric([2, 2], [1, 1], [1, 1], [1, 1], 1),
        );
        let out = conv.forward(x);
        assert_eq!(out.dims(), [2, 5, 5, 4]);
        let err = max_abs_diff(&out.into_data(), &reference.into_data());
        assert!(err < 1e-5, "differs by {err}");
    }
}
