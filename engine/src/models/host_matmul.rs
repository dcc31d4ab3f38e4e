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

/// `a @ b` with numpy-style batch broadcasting; `None` when the shapes do not multiply.
pub fn matmul(a: &ArrayViewD<f32>, b: &ArrayViewD<f32>) -> Option<ArrayD<f32>> {
    let plan = Plan::new(a.shape(), b.shape())?;
    let (m, k, n) = (plan.m, plan.k, plan.n);
    let shape = plan.shape();
    let size = m * n;
    if size == 0 || k == 0 || plan.batch.contains(&0) {
        return Some(ArrayD::zeros(IxDyn(&shape)));
    }
    let (offsets_a, offsets_b) = (plan.offsets(a), plan.offsets(b));
    let (sa, sb) = (a.strides(), b.strides());
    let (a_rs, a_cs) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (b_rs, b_cs) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    let (pa, pb) = (Shared(a.as_ptr()), Shared(b.as_ptr()));
    let batches = offsets_a.len();
    let threads = rayon::current_num_threads();
    let mut out: Vec<f32> = Vec::with_capacity(batches * size);
    let multiply = |dst: &mut [f32], (oa, ob): (isize, isize), parallelism| {
        let (pa, pb) = (pa, pb);
        // SAFETY: the offsets and strides come from the views' own layout, so every element
        // read lies in `a` or `b`; `dst` is `m * n` row-major elements; `read_dst` is false,
        // so gemm writes every element of `dst` without reading it.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                pa.0.offset(oa),
                a_cs,
                a_rs,
                pb.0.offset(ob),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    // SAFETY: `out` has the capacity; every element is written below before it is read.
    let dst = unsafe {
        let spare = out.spare_capacity_mut();
        std::slice::from_raw_parts_mut(spare.as_mut_ptr() as *mut f32, batches * size)
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
    // SAFETY: all `batches * size` elements were written by gemm.
    unsafe { out.set_len(batches * size) };
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

/// Whether the host op takes this product (f32 operands whose shapes multiply).
fn takes(a: &NdArrayTensor, b: &NdArrayTensor) -> bool {
    match (a, b) {
        (NdArrayTensor::F32(a), NdArrayTensor::F32(b)) => Plan::new(a.shape(), b.shape()).is_some(),
        _ => false,
    }
}

fn forward_primitive(a: NdArrayTensor, b: NdArrayTensor) -> NdArrayTensor {
    let (a, b) = (into_array(a), into_array(b));
    into_tensor(matmul(&a.view(), &b.view()).expect("checked by `takes`"))
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Cpu, 2> for MatmulBackward {
    type State = (ArcArray<f32, IxDyn>, ArcArray<f32, IxDyn>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (a, b) = ops.state;
        let g = into_array(grads.consume::<Cpu>(&ops.node));
        let [pa, pb] = &ops.parents;
        let [ga, gb] = matmul_backward(
            &a.view(),
            &b.view(),
            &g.view(),
            [pa.is_some(), pb.is_some()],
        );
        for (parent, grad) in [(pa, ga), (pb, gb)] {
            if let (Some(parent), Some(grad)) = (parent, grad) {
                grads.register::<Cpu>(parent.id, into_tensor(grad));
            }
        }
    }
}

fn forward_autodiff(
    a: FloatTensor<CpuAutodiff>,
    b: FloatTensor<CpuAutodiff>,
) -> FloatTensor<CpuAutodiff> {
    match MatmulBackward
        .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (pa, pb) = (into_array(a.primitive), into_array(b.primitive));
            let out = matmul(&pa.view(), &pb.view()).expect("checked by `takes`");
            prep.finish((pa, pb), into_tensor(out))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward_primitive(a.primitive, b.primitive)),
    }
}

/// `a @ b` (ranks `DA`, `DB`, output rank `DO`, batch dims broadcast numpy-style) through the
/// host op when `B` is one of the CPU backends it serves and the operands are f32; the
/// operands back otherwise.
pub fn try_matmul<B: Backend, const DA: usize, const DB: usize, const DO: usize>(
    a: Tensor<B, DA>,
    b: Tensor<B, DB>,
) -> Result<Tensor<B, DO>, (Tensor<B, DA>, Tensor<B, DB>)> {
    let inputs = match same_type::<_, (Tensor<CpuAutodiff, DA>, Tensor<CpuAutodiff, DB>)>((a, b)) {
        Ok((a, b)) => {
            let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
            if takes(&a.primitive, &b.primitive) {
                let out: Tensor<CpuAutodiff, DO> =
                    Tensor::from_primitive(TensorPrimitive::Float(forward_autodiff(a, b)));
                return Ok(same_type(out).unwrap_or_else(|_| unreachable!()));
            }
            let back = (
                Tensor::<CpuAutodiff, DA>::from_primitive(TensorPrimitive::Float(a)),
                Tensor::<CpuAutodiff, DB>::from_primitive(TensorPrimitive::Float(b)),
            );
            return Err(same_type(back).unwrap_or_else(|_| unreachable!()));
        }
        Err(inputs) => inputs,
    };
    match same_type::<_, (Tensor<Cpu, DA>, Tensor<Cpu, DB>)>(inputs) {
        Ok((a, b)) => {
            let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
            if takes(&a, &b) {
                let out: Tensor<Cpu, DO> =
                    Tensor::from_primitive(TensorPrimitive::Float(forward_primitive(a, b)));
                return Ok(same_type(out).unwrap_or_else(|_| unreachable!()));
            }
            let back = (
                Tensor::<Cpu, DA>::from_primitive(TensorPrimitive::Float(a)),
                Tensor::<Cpu, DB>::from_primitive(TensorPrimitive::Float(b)),
            );
            Err(same_type(back).unwrap_or_else(|_| unreachable!()))
        }
        Err(inputs) => Err(inputs),
    }
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
