//! Batched matrix products on the host for burn-ndarray, with a hand-written backward.
//!
//! burn-ndarray 0.21's `matmul` copies both operands and its result (its `reshape` always
//! copies, and a transposed operand is first laid out row-major), zero-fills the output, and
//! multiplies with matrixmultiply's AVX2 kernel. Here operands are read in place through their
//! strides (a transposed view or a broadcast weight costs nothing), the output is written once,
//! and the product runs on the `gemm` crate, whose AVX-512 kernels (picked at run time) were
//! 2-3x matrixmultiply's on the UNet's shapes. Batches run in parallel on rayon's pool; a
//! single matrix is split by `gemm` itself. Each output element is one dot product in a fixed
//! order, so results do not depend on the thread count. Reached through [`try_matmul`]
//! (`host_dispatch.rs`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayD, ArrayViewD, Axis, IxDyn};
use rayon::prelude::*;

use super::host_dispatch::{Cpu, CpuAutodiff, same_type};

/// Shapes of a product `a @ b`: `a` is `[.., m, k]`, `b` is `[.., k, n]`, the batch dims
/// broadcast numpy-style (the lower-rank operand gets leading 1s, a 1 stretches).
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// Output batch dims.
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
}

impl Plan {
    fn new(a: &[usize], b: &[usize]) -> Option<Self> {
        if a.len() < 2 || b.len() < 2 {
            return None;
        }
        let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
        let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
        if k != k2 {
            return None;
        }
        let rank = a.len().max(b.len()) - 2;
        let dim = |s: &[usize], i: usize| {
            let lead = rank - (s.len() - 2);
            if i < lead { 1 } else { s[i - lead] }
        };
        let mut batch = Vec::with_capacity(rank);
        for i in 0..rank {
            let (da, db) = (dim(a, i), dim(b, i));
            batch.push(match (da, db) {
                _ if da == db => da,
                (1, _) => db,
                (_, 1) => da,
                _ => return None,
            });
        }
        Some(Self { batch, m, k, n })
    }

    fn shape(&self) -> Vec<usize> {
        let mut shape = self.batch.clone();
        shape.extend([self.m, self.n]);
        shape
    }

    /// Element offset of each output batch's matrix in `view` (broadcast dims stay put).
    fn offsets(&self, view: &ArrayViewD<f32>) -> Vec<isize> {
        let (shape, strides) = (view.shape(), view.strides());
        let lead = self.batch.len() - (shape.len() - 2);
        let count: usize = self.batch.iter().product();
        let mut offsets = Vec::with_capacity(count);
        let mut index = vec![0usize; self.batch.len()];
        for _ in 0..count {
            let offset = (lead..self.batch.len())
                .filter(|&i| shape[i - lead] != 1)
                .map(|i| index[i] as isize * strides[i - lead])
                .sum();
            offsets.push(offset);
            // Row-major increment of the batch index.
            for i in (0..index.len()).rev() {
                index[i] += 1;
                if index[i] < self.batch[i] {
                    break;
                }
                index[i] = 0;
            }
        }
        offsets
    }
}

/// A raw pointer that crosses into rayon's workers; every use stays inside the borrow of
/// the array it came from.
#[derive(Clone, Copy)]
struct Shared(*const f32);
// SAFETY: only read, while the source array is borrowed by the calling function.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// Where a bias joins the product: one value per output column (a Linear's, over its output
/// features) or per output row (a convolution's, whose rows are output channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasAxis {
    /// `bias[j]` added to column `j` of every matrix.
    Columns,
    /// `bias[i]` added to row `i` of every matrix.
    Rows,
}

/// `a @ b` with numpy-style batch broadcasting; `None` when the shapes do not multiply.
pub fn matmul(a: &ArrayViewD<f32>, b: &ArrayViewD<f32>) -> Option<ArrayD<f32>> {
    matmul_bias(a, b, None)
}

/// Every output matrix (`m x n`, row-major) filled with the bias, `batches` times.
fn broadcast_bias(bias: &[f32], axis: BiasAxis, m: usize, n: usize, batches: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(batches * m * n);
    for _ in 0..batches {
        match axis {
            BiasAxis::Columns => (0..m).for_each(|_| out.extend_from_slice(bias)),
            BiasAxis::Rows => bias
                .iter()
                .for_each(|&v| out.extend(std::iter::repeat_n(v, n))),
        }
    }
    out
}

/// `a @ b + bias`: the bias is written into the output first and the product accumulated onto
/// it (one pass fewer than adding it afterwards). `None` when the shapes do not fit.
pub fn matmul_bias(
    a: &ArrayViewD<f32>,
    b: &ArrayViewD<f32>,
    bias: Option<(&[f32], BiasAxis)>,
) -> Option<ArrayD<f32>> {
    let plan = Plan::new(a.shape(), b.shape())?;
    let (m, k, n) = (plan.m, plan.k, plan.n);
    let shape = plan.shape();
    let size = m * n;
    let batches: usize = plan.batch.iter().product();
    if let Some((values, axis)) = bias {
        let expected = if axis == BiasAxis::Columns { n } else { m };
        if values.len() != expected {
            return None;
        }
    }
    if size == 0 || k == 0 || batches == 0 {
        let out = match bias {
            Some((values, axis)) => broadcast_bias(values, axis, m, n, batches),
            None => vec![0.0; batches * size],
        };
        return Some(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("the plan's shape"));
    }
    let (offsets_a, offsets_b) = (plan.offsets(a), plan.offsets(b));
    let (sa, sb) = (a.strides(), b.strides());
    let (a_rs, a_cs) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (b_rs, b_cs) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    let (pa, pb) = (Shared(a.as_ptr()), Shared(b.as_ptr()));
    let threads = rayon::current_num_threads();
    let read_dst = bias.is_some();
    let mut out: Vec<f32> = match bias {
        Some((values, axis)) => broadcast_bias(values, axis, m, n, batches),
        None => Vec::with_capacity(batches * size),
    };
    let multiply = |dst: &mut [f32], (oa, ob): (isize, isize), parallelism| {
        let (pa, pb) = (pa, pb);
        // SAFETY: the offsets and strides come from the views' own layout, so every element
        // read lies in `a` or `b`; `dst` is `m * n` row-major elements, which gemm reads only
        // with `read_dst` (then they hold the bias) and writes in full either way.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                read_dst,
                pa.0.offset(oa),
                a_cs,
                a_rs,
                pb.0.offset(ob),
                b_cs,
                b_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    let dst: &mut [f32] = if read_dst {
        &mut out
    } else {
        // SAFETY: `out` has the capacity; gemm writes every element before anything reads it.
        unsafe {
            let spare = out.spare_capacity_mut();
            std::slice::from_raw_parts_mut(spare.as_mut_ptr() as *mut f32, batches * size)
        }
    };
    let pairs = offsets_a.into_iter().zip(offsets_b);
    if batches >= threads {
        let pairs: Vec<_> = pairs.collect();
        dst.par_chunks_mut(size)
            .zip(pairs.into_par_iter())
            .for_each(|(dst, offsets)| multiply(dst, offsets, gemm::Parallelism::None));
    } else {
        for (dst, offsets) in dst.chunks_mut(size).zip(pairs) {
            multiply(dst, offsets, gemm::Parallelism::Rayon(threads));
        }
    }
    if !read_dst {
        // SAFETY: all `batches * size` elements were written by gemm.
        unsafe { out.set_len(batches * size) };
    }
    Some(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("the plan's shape holds the product"))
}

/// `full` summed over the dims where `target` (numpy-aligned to its right) is 1 or absent:
/// the gradient of an operand that was broadcast.
fn reduce_to(full: ArrayD<f32>, target: &[usize]) -> ArrayD<f32> {
    let lead = full.ndim() - target.len();
    let mut out = full;
    for axis in (0..out.ndim() - 2).rev() {
        let keep = axis >= lead && target[axis - lead] == out.shape()[axis];
        if !keep {
            out = out.sum_axis(Axis(axis)).insert_axis(Axis(axis));
        }
    }
    out.into_shape_with_order(IxDyn(target))
        .expect("the reduced gradient has the operand's element count")
}

/// Gradients of `a @ b` for an output gradient `g`: `(g @ b^T, a^T @ g)`, each reduced to
/// its operand's shape.
pub fn matmul_backward(
    a: &ArrayViewD<f32>,
    b: &ArrayViewD<f32>,
    g: &ArrayViewD<f32>,
    need: [bool; 2],
) -> [Option<ArrayD<f32>>; 2] {
    fn transposed<'a>(v: &ArrayViewD<'a, f32>) -> ArrayViewD<'a, f32> {
        let mut t = v.clone();
        let d = t.ndim();
        t.swap_axes(d - 2, d - 1);
        t
    }
    let ga = need[0].then(|| {
        let full = matmul(g, &transposed(b)).expect("the forward's shapes multiply");
        reduce_to(full, a.shape())
    });
    let gb = need[1].then(|| {
        let full = matmul(&transposed(a), g).expect("the forward's shapes multiply");
        reduce_to(full, b.shape())
    });
    [ga, gb]
}

fn into_array(t: NdArrayTensor) -> ArcArray<f32, IxDyn> {
    match t {
        NdArrayTensor::F32(storage) => storage.into_shared(),
        _ => unreachable!("checked to be f32 before"),
    }
}

fn into_tensor(a: ArrayD<f32>) -> NdArrayTensor {
    NdArrayTensor::from(a.into_shared())
}

/// The gradient of the bias in `a @ b + bias` for an output gradient `g`: `g` summed over
/// every dim but the bias's, in a fixed order.
pub fn bias_gradient(g: &ArrayViewD<f32>, axis: BiasAxis) -> ArrayD<f32> {
    let d = g.ndim();
    let (m, n) = (g.shape()[d - 2], g.shape()[d - 1]);
    let g = g.as_standard_layout();
    let values = g.as_slice().expect("row-major");
    let mut sums = vec![0.0f32; if axis == BiasAxis::Columns { n } else { m }];
    if m * n > 0 {
        for row in values.chunks(n).enumerate() {
            match axis {
                BiasAxis::Columns => sums.iter_mut().zip(row.1).for_each(|(s, v)| *s += v),
                BiasAxis::Rows => sums[row.0 % m] += row.1.iter().sum::<f32>(),
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[sums.len()]), sums).expect("1-D")
}

/// An f32 operand of the host op: its array, shared with the tensor.
type Operand = ArcArray<f32, IxDyn>;

/// Whether the host op takes this product (f32 operands whose shapes fit).
fn takes(a: &NdArrayTensor, b: &NdArrayTensor, bias: Option<(&NdArrayTensor, BiasAxis)>) -> bool {
    let (NdArrayTensor::F32(a), NdArrayTensor::F32(b)) = (a, b) else {
        return false;
    };
    let Some(plan) = Plan::new(a.shape(), b.shape()) else {
        return false;
    };
    match bias {
        None => true,
        Some((NdArrayTensor::F32(bias), axis)) => {
            bias.shape()
                == [if axis == BiasAxis::Columns {
                    plan.n
                } else {
                    plan.m
                }]
        }
        Some(_) => false,
    }
}

/// The forward on arrays the tensors share.
fn forward_arrays(a: &Operand, b: &Operand, bias: Option<(&Operand, BiasAxis)>) -> NdArrayTensor {
    let bias_values = bias.map(|(values, axis)| (values.as_standard_layout().to_owned(), axis));
    let bias = bias_values
        .as_ref()
        .map(|(values, axis)| (values.as_slice().expect("row-major copy"), *axis));
    into_tensor(matmul_bias(&a.view(), &b.view(), bias).expect("checked by `takes`"))
}

/// Registers the gradients of `a @ b (+ bias)` for the parents that want one.
fn register<S, const N: usize>(
    grads: &mut Gradients,
    ops: &Ops<S, N>,
    (a, b): (&Operand, &Operand),
    bias_axis: Option<BiasAxis>,
) {
    let parents = &ops.parents;
    let g = into_array(grads.consume::<Cpu>(&ops.node));
    let [ga, gb] = matmul_backward(
        &a.view(),
        &b.view(),
        &g.view(),
        [parents[0].is_some(), parents[1].is_some()],
    );
    let gbias = bias_axis
        .filter(|_| parents.get(2).is_some_and(Option::is_some))
        .map(|axis| bias_gradient(&g.view(), axis));
    for (parent, grad) in parents.iter().zip([ga, gb, gbias]) {
        if let (Some(parent), Some(grad)) = (parent, grad) {
            grads.register::<Cpu>(parent.id, into_tensor(grad));
        }
    }
}
#[derive(Debug)]
struct MatmulBackward;

impl Backward<Cpu, 2> for MatmulBackward {
    type State = (Operand, Operand);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (a, b) = &ops.state;
        register(grads, &ops, (a, b), None);
    }
}

#[derive(Debug)]
struct AffineBackward;

impl Backward<Cpu, 3> for AffineBackward {
    type State = (Operand, Operand, BiasAxis);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (a, b, axis) = &ops.state;
        register(grads, &ops, (a, b), Some(*axis));
    }
}

fn forward_autodiff(
    a: FloatTensor<CpuAutodiff>,
    b: FloatTensor<CpuAutodiff>,
    bias: Option<(FloatTensor<CpuAutodiff>, BiasAxis)>,
) -> FloatTensor<CpuAutodiff> {
    let (pa, pb) = (into_array(a.primitive), into_array(b.primitive));
    match bias {
        None => {
            let out = forward_arrays(&pa, &pb, None);
            match MatmulBackward
                .prepare::<NoCheckpointing>([a.node, b.node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((pa, pb), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
        Some((bias, axis)) => {
            let values = into_array(bias.primitive);
            let out = forward_arrays(&pa, &pb, Some((&values, axis)));
            match AffineBackward
                .prepare::<NoCheckpointing>([a.node, b.node, bias.node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((pa, pb, axis), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
    }
}

/// Operands of [`try_product`] on backend `B`.
type Operands<B, const DA: usize, const DB: usize> =
    (Tensor<B, DA>, Tensor<B, DB>, Option<Tensor<B, 1>>);

/// `a @ b (+ bias)` through the host op when `B` is one of the CPU backends it serves and
/// the operands are f32 and fit; the operands back otherwise.
fn try_product<B: Backend, const DA: usize, const DB: usize, const DO: usize>(
    operands: Operands<B, DA, DB>,
    axis: BiasAxis,
) -> Result<Tensor<B, DO>, Operands<B, DA, DB>> {
    let operands = match same_type::<_, Operands<CpuAutodiff, DA, DB>>(operands) {
        Ok((a, b, bias)) => {
            let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
            let bias = bias.map(|bias| bias.into_primitive().tensor());
            let bias_primitive = bias.as_ref().map(|bias| (&bias.primitive, axis));
            if takes(&a.primitive, &b.primitive, bias_primitive) {
                let out = forward_autodiff(a, b, bias.map(|bias| (bias, axis)));
                let out = Tensor::<CpuAutodiff, DO>::from_primitive(TensorPrimitive::Float(out));
                return Ok(same_type(out).unwrap_or_else(|_| unreachable!()));
            }
            let back: Operands<CpuAutodiff, DA, DB> = (
                Tensor::from_primitive(TensorPrimitive::Float(a)),
                Tensor::from_primitive(TensorPrimitive::Float(b)),
                bias.map(|bias| Tensor::from_primitive(TensorPrimitive::Float(bias))),
            );
            return Err(same_type(back).unwrap_or_else(|_| unreachable!()));
        }
        Err(operands) => operands,
    };
    match same_type::<_, Operands<Cpu, DA, DB>>(operands) {
        Ok((a, b, bias)) => {
            let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
            let bias = bias.map(|bias| bias.into_primitive().tensor());
            if takes(&a, &b, bias.as_ref().map(|bias| (bias, axis))) {
                let (pa, pb) = (into_array(a), into_array(b));
                let values = bias.map(into_array);
                let out = forward_arrays(&pa, &pb, values.as_ref().map(|v| (v, axis)));
                let out = Tensor::<Cpu, DO>::from_primitive(TensorPrimitive::Float(out));
                return Ok(same_type(out).unwrap_or_else(|_| unreachable!()));
            }
            let back: Operands<Cpu, DA, DB> = (
                Tensor::from_primitive(TensorPrimitive::Float(a)),
                Tensor::from_primitive(TensorPrimitive::Float(b)),
                bias.map(|bias| Tensor::from_primitive(TensorPrimitive::Float(bias))),
            );
            Err(same_type(back).unwrap_or_else(|_| unreachable!()))
        }
        Err(operands) => Err(operands),
    }
}

/// `a @ b` (ranks `DA`, `DB`, output rank `DO`, batch dims broadcast numpy-style) through the
/// host op when `B` is one of the CPU backends it serves and the operands are f32; the
/// operands back otherwise.
pub fn try_matmul<B: Backend, const DA: usize, const DB: usize, const DO: usize>(
    a: Tensor<B, DA>,
    b: Tensor<B, DB>,
) -> Result<Tensor<B, DO>, (Tensor<B, DA>, Tensor<B, DB>)> {
    try_product((a, b, None), BiasAxis::Columns).map_err(|(a, b, _)| (a, b))
}

/// [`try_matmul`] plus `bias` along `axis` of every output matrix, in the same pass.
#[allow(clippy::type_complexity)]
pub fn try_matmul_bias<B: Backend, const DA: usize, const DB: usize, const DO: usize>(
    a: Tensor<B, DA>,
    b: Tensor<B, DB>,
    bias: Tensor<B, 1>,
    axis: BiasAxis,
) -> Result<Tensor<B, DO>, (Tensor<B, DA>, Tensor<B, DB>, Tensor<B, 1>)> {
    try_product((a, b, Some(bias)), axis).map_err(|(a, b, bias)| {
        (
            a,
            b,
            bias.unwrap_or_else(|| unreachable!("handed back as given")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    /// The definition, one dot product at a time, with explicit broadcasting.
    fn reference(a: &ArrayViewD<f32>, b: &ArrayViewD<f32>) -> ArrayD<f32> {
        let plan = Plan::new(a.shape(), b.shape()).unwrap();
        let rank = plan.batch.len();
        let pad = |v: &ArrayViewD<f32>| {
            let mut v = v.to_owned();
            while v.ndim() < rank + 2 {
                v.insert_axis_inplace(Axis(0));
            }
            v
        };
        let (a, b) = (pad(a), pad(b));
        let mut out = ArrayD::zeros(IxDyn(&plan.shape()));
        for (index, value) in out.indexed_iter_mut() {
            let index: Vec<usize> = (0..rank + 2).map(|i| index[i]).collect();
            let pick = |v: &ArrayD<f32>, row: usize, col: usize| {
                let mut at: Vec<usize> = (0..rank)
                    .map(|i| if v.shape()[i] == 1 { 0 } else { index[i] })
                    .collect();
                at.extend([row, col]);
                v[IxDyn(&at)]
            };
            let (i, j) = (index[rank], index[rank + 1]);
            *value = (0..plan.k)
                .map(|l| pick(&a, i, l) as f64 * pick(&b, l, j) as f64)
                .sum::<f64>() as f32;
        }
        out
    }

    fn filled(shape: &[usize], seed: u32) -> ArrayD<f32> {
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
        Array::from_shape_simple_fn(IxDyn(shape), || {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
    }

    fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
        assert_eq!(a.shape(), b.shape());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Products equal the definition on plain, transposed (strided), batch-broadcast and
    /// rank-broadcast operands, including more batches than threads and a single one.
    #[test]
    fn products_match_the_definition_on_strided_and_broadcast_operands() {
        let a = filled(&[3, 2, 5, 7], 1);
        let b = filled(&[3, 2, 7, 4], 2);
        let bt = filled(&[3, 2, 4, 7], 3);
        let mut bt_view = bt.view();
        bt_view.swap_axes(2, 3);
        let w = filled(&[7, 6], 4);
        let w1 = filled(&[1, 2, 7, 4], 5);
        let single_a = filled(&[37, 19], 6);
        let single_b = filled(&[19, 23], 7);
        let cases: Vec<(ArrayViewD<f32>, ArrayViewD<f32>)> = vec![
            (a.view(), b.view()),
            (a.view(), bt_view.clone()),
            (a.view(), w.view()),
            (a.view(), w1.view()),
            (w1.view(), bt.view()),
            (single_a.view(), single_b.view()),
        ];
        for (x, y) in cases {
            let got = matmul(&x, &y).unwrap();
            let want = reference(&x, &y);
            assert!(
                max_diff(&got, &want) < 1e-5,
                "{:?} @ {:?}",
                x.shape(),
                y.shape()
            );
        }
        assert!(
            matmul(&a.view(), &a.view()).is_none(),
            "7 x 5 does not multiply"
        );
    }

    /// The backward's gradients equal the definition's: `d(sum(c * (a @ b)))` by finite
    /// reasoning on the linear map, i.e. `g @ b^T` and `a^T @ g` summed over broadcast batches.
    #[test]
    fn gradients_are_the_transposed_products_reduced_over_broadcast_dims() {
        let a = filled(&[3, 5, 7], 8);
        let w = filled(&[7, 4], 9);
        let g = filled(&[3, 5, 4], 10);
        let [ga, gw] = matmul_backward(&a.view(), &w.view(), &g.view(), [true, true]);
        let (ga, gw) = (ga.unwrap(), gw.unwrap());
        let wt = w.view().reversed_axes().into_dyn();
        let want_ga = reference(&g.view(), &wt);
        assert!(max_diff(&ga, &want_ga) < 1e-5);
        let mut want_gw = ArrayD::zeros(IxDyn(&[7, 4]));
        for i in 0..3 {
            let ai = a.index_axis(Axis(0), i).reversed_axes().into_dyn();
            let gi = g.index_axis(Axis(0), i).into_dyn();
            want_gw = want_gw + reference(&ai, &gi);
        }
        assert!(max_diff(&gw, &want_gw) < 1e-5);
        let [none, _] = matmul_backward(&a.view(), &w.view(), &g.view(), [false, true]);
        assert!(none.is_none());
    }
}
