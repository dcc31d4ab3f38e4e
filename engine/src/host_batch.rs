//! Splitting a batch across the CPU's cores on host backends.
//!
//! On the CPU backends most element-wise tensor ops run on the calling thread; only the matrix
//! products and the host ops (`models/host_*.rs`) spread over the cores. So a batched forward
//! such as the UNet's runs instead as independent forwards, one chunk of the batch per core,
//! which keeps every core busy between those ops. GPU backends get one chunk: the device
//! already runs the batch in parallel.

use std::any::TypeId;
use std::ops::Range;
use std::sync::mpsc;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// Whether `B` computes on the host CPU (burn's `ndarray` or `flex` backend, or autodiff over
/// one).
pub fn is_host<B: Backend>() -> bool {
    let device = TypeId::of::<B::Device>();
    #[cfg(feature = "cpu")]
    if device == TypeId::of::<burn::backend::ndarray::NdArrayDevice>() {
        return true;
    }
    #[cfg(feature = "flex")]
    if device == TypeId::of::<burn::backend::flex::FlexDevice>() {
        return true;
    }
    let _ = device;
    false
}

/// How many chunks [`map_chunks`] splits a batch into on `B`: the cores on a host backend,
/// else 1.
pub fn chunks_for<B: Backend>() -> usize {
    if is_host::<B>() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    }
}

/// `f` over consecutive ranges that cover `0..batch`, at most `chunks` of them and none
/// empty, run in parallel on scoped threads; the results in range order. One range runs on
/// the calling thread, so `chunks <= 1` (or `batch <= 1`) costs nothing extra.
pub fn map_chunks<T, F>(batch: usize, chunks: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(Range<usize>) -> T + Sync,
{
    let ranges = split(batch, chunks);
    if ranges.len() <= 1 {
        return ranges.into_iter().map(&f).collect();
    }
    std::thread::scope(|scope| {
        let f = &f;
        let (first, rest) = ranges.split_first().expect("two ranges or more");
        let handles: Vec<_> = rest
            .iter()
            .cloned()
            .map(|range| scope.spawn(move || f(range)))
            .collect();
        let mut out = vec![f(first.clone())];
        for handle in handles {
            match handle.join() {
                Ok(value) => out.push(value),
                // A panic in a chunk is the caller's panic, as if it ran inline.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// `f(x, context)` over the batch (dimension 0 of both), one chunk per core on a host backend
/// ([`chunks_for`]), the outputs concatenated in order; elsewhere one call on the whole batch.
/// For forwards whose samples are independent (a UNet's; not batch statistics).
pub fn map_batch<B, const D: usize, const C: usize, const O: usize, F>(
    x: Tensor<B, D>,
    context: Tensor<B, C>,
    f: F,
) -> Tensor<B, O>
where
    B: Backend,
    F: Fn(Tensor<B, D>, Tensor<B, C>) -> Tensor<B, O> + Sync,
{
    map_batch_labelled(x, context, None, |x, context, _| f(x, context))
}

/// [`map_batch`] with optional per-sample `labels` (a UNet's `class_labels`), split alike.
pub fn map_batch_labelled<B, const D: usize, const C: usize, const O: usize, F>(
    x: Tensor<B, D>,
    context: Tensor<B, C>,
    labels: Option<Tensor<B, 2>>,
    f: F,
) -> Tensor<B, O>
where
    B: Backend,
    F: Fn(Tensor<B, D>, Tensor<B, C>, Option<Tensor<B, 2>>) -> Tensor<B, O> + Sync,
{
    map_batch_grouped(x, context, labels, 1, f)
}

/// [`map_batch_labelled`] for forwards whose samples depend on each other in groups of
/// `group` consecutive ones (MVDream's views of one object): chunks never cut a group.
///
/// # Panics
/// If the batch is not whole groups (callers check the view count where it is user input).
pub fn map_batch_grouped<B, const D: usize, const C: usize, const O: usize, F>(
    x: Tensor<B, D>,
    context: Tensor<B, C>,
    labels: Option<Tensor<B, 2>>,
    group: usize,
    f: F,
) -> Tensor<B, O>
where
    B: Backend,
    F: Fn(Tensor<B, D>, Tensor<B, C>, Option<Tensor<B, 2>>) -> Tensor<B, O> + Sync,
{
    let batch = x.dims()[0];
    let group = group.max(1);
    assert!(
        batch % group == 0,
        "a batch of {batch} is not whole groups of {group}"
    );
    let mut parts = map_chunks(batch / group, chunks_for::<B>(), |r| {
        let r = r.start * group..r.end * group;
        if r.len() == batch {
            return f(x.clone(), context.clone(), labels.clone());
        }
        f(
            x.clone().narrow(0, r.start, r.len()),
            context.clone().narrow(0, r.start, r.len()),
            labels.clone().map(|l| l.narrow(0, r.start, r.len())),
        )
    });
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    Tensor::cat(parts, 0)
}

/// The value and parameter gradients of a loss that is a mean over the samples of a batch,
/// with the batch in at most `chunks` parts ([`chunks_for`] on the training backend) that run
/// forward and backward in parallel. `loss(model, range)` is the mean loss of the samples in
/// `range`; the parts are weighted by their share of the batch, so the result is the whole
/// batch's mean and its gradient (up to float summation order).
pub fn batch_gradients<B, M, F>(
    model: &M,
    batch: usize,
    chunks: usize,
    loss: F,
) -> (f32, GradientsParams)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    M::InnerModule: Sync,
    F: Fn(&M, Range<usize>) -> Tensor<B, 1> + Sync,
{
    let ranges = split(batch, chunks);
    if ranges.len() <= 1 {
        let value = loss(model, 0..batch);
        let scalar = value.clone().into_scalar().elem::<f32>();
        return (scalar, GradientsParams::from_grads(value.backward(), model));
    }
    let inner = model.valid();
    let mut tracked = Tracked(Vec::new());
    model.visit(&mut tracked);
    let parts = map_chunks(batch, chunks, |range| {
        // Each part gets its own parameter leaves: parts that shared them would share one
        // autodiff graph, whose lock serialises the backward passes. `from_inner` alone left
        // the UNet's parameters untracked (no gradient at all; tests/tiny_world.rs), so each
        // part copies `model`'s tracking.
        let local = M::from_inner(inner.clone()).map(&mut Track(tracked.0.iter()));
        let share = range.len() as f32 / batch as f32;
        let value = loss(&local, range) * share;
        let scalar = value.clone().into_scalar().elem::<f32>();
        (
            scalar,
            GradientsParams::from_grads(value.backward(), &local),
        )
    });
    let mut sum = GradientsAccumulator::<M>::new();
    let mut total = 0.0;
    for (value, grads) in parts {
        total += value;
        sum.accumulate(model, grads);
    }
    (total, sum.grads())
}

/// The value and parameter gradients of a loss that couples the whole batch through
/// per-sample embeddings (CLIP's contrastive loss: every image against every caption), with
/// the embedding passes split across at most `chunks` parts that run in parallel.
/// `embed(model, range)` returns the embeddings of the samples in `range` (`[len, d]` each,
/// e.g. image and text features); `loss(model, embeddings)` is the loss of the whole batch's
/// embeddings, concatenated in order. Each part embeds its samples with its own graph; the
/// loss and its gradient with respect to every embedding are computed once on the gathered
/// embeddings, and each part then backpropagates its slice of that gradient (the split of
/// GradCache, Gao et al. 2021, with each part's graph kept between the passes instead of a
/// second forward). Parameters `loss` itself uses (a learned temperature) get their gradient
/// from that pass. Equal to the unsplit gradient up to float summation order.
pub fn coupled_batch_gradients<B, M, E, L>(
    model: &M,
    batch: usize,
    chunks: usize,
    embed: E,
    loss: L,
) -> (f32, GradientsParams)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    M::InnerModule: Sync,
    E: Fn(&M, Range<usize>) -> Vec<Tensor<B, 2>> + Sync,
    L: Fn(&M, Vec<Tensor<B, 2>>) -> Tensor<B, 1>,
{
    let ranges = split(batch, chunks);
    if ranges.len() <= 1 {
        let value = loss(model, embed(model, 0..batch));
        let scalar = value.clone().into_scalar().elem::<f32>();
        return (scalar, GradientsParams::from_grads(value.backward(), model));
    }
    type Inner<B> = Tensor<<B as AutodiffBackend>::InnerBackend, 2>;
    let inner = model.valid();
    let mut tracked = Tracked(Vec::new());
    model.visit(&mut tracked);
    let (embeds_tx, embeds_rx) = mpsc::channel::<(usize, Vec<Inner<B>>)>();
    let (grads_txs, grads_rxs): (Vec<_>, Vec<_>) = ranges
        .iter()
        .map(|_| mpsc::channel::<Vec<Inner<B>>>())
        .unzip();
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .iter()
            .cloned()
            .zip(grads_rxs)
            .enumerate()
            .map(|(i, (range, grads_rx))| {
                let (inner, tracked, embed) = (&inner, &tracked, &embed);
                let embeds_tx = embeds_tx.clone();
                scope.spawn(move || {
                    // Own parameter leaves, as in `batch_gradients`.
                    let local = M::from_inner(inner.clone()).map(&mut Track(tracked.0.iter()));
                    let embeds = embed(&local, range);
                    let values = embeds.iter().map(|e| e.clone().inner()).collect();
                    // Sent, then the sender dropped: a part that fails before this point
                    // closes the channel instead of leaving the caller waiting.
                    embeds_tx.send((i, values)).ok()?;
                    drop(embeds_tx);
                    let grads = grads_rx.recv().ok()?;
                    // d(sum(e * g)) / d(params) is the loss gradient through this part.
                    let surrogate = embeds
                        .into_iter()
                        .zip(grads)
                        .map(|(e, g)| (e * Tensor::from_inner(g)).sum())
                        .reduce(|a, b| a + b)?;
                    Some(GradientsParams::from_grads(surrogate.backward(), &local))
                })
            })
            .collect();
        drop(embeds_tx);
        let mut parts: Vec<Option<Vec<Inner<B>>>> = ranges.iter().map(|_| None).collect();
        for (i, values) in embeds_rx.iter() {
            parts[i] = Some(values);
        }
        let result = parts.into_iter().collect::<Option<Vec<_>>>().map(|parts| {
            // [batch, d] leaves, one per embedding kind.
            let kinds = parts[0].len();
            let leaves: Vec<Tensor<B, 2>> = (0..kinds)
                .map(|k| {
                    let pieces = parts.iter().map(|p| p[k].clone()).collect();
                    Tensor::from_inner(Tensor::cat(pieces, 0)).require_grad()
                })
                .collect();
            let value = loss(model, leaves.clone());
            let scalar = value.clone().into_scalar().elem::<f32>();
            let grads = value.backward();
            for (range, tx) in ranges.iter().zip(&grads_txs) {
                let slices = leaves
                    .iter()
                    .map(|leaf| {
                        leaf.grad(&grads)
                            .expect("the loss uses every embedding")
                            .narrow(0, range.start, range.len())
                    })
                    .collect();
                tx.send(slices).ok();
            }
            (scalar, GradientsParams::from_grads(grads, model))
        });
        // Waiting parts see their channel close if the loss pass did not run.
        drop(grads_txs);
        let mut sum = GradientsAccumulator::<M>::new();
        for handle in handles {
            match handle.join() {
                Ok(Some(grads)) => sum.accumulate(model, grads),
                Ok(None) => {}
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        let (scalar, grads) = result.expect("every part sent its embeddings");
        sum.accumulate(model, grads);
        (scalar, sum.grads())
    })
}

/// Whether each float parameter requires a gradient, in visiting order.
struct Tracked(Vec<bool>);

impl<B: Backend> ModuleVisitor<B> for Tracked {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().is_require_grad());
    }
}

/// Sets each float parameter's gradient tracking from a [`Tracked`] list.
struct Track<'a>(std::slice::Iter<'a, bool>);

impl<B: Backend> ModuleMapper<B> for Track<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tracked = *self.0.next().expect("the same module structure");
        Param::from_mapped_value(id, tensor.set_require_grad(tracked), mapper)
    }
}

/// `0..batch` in at most `chunks` consecutive non-empty ranges whose lengths differ by at
/// most one (`batch = 0` gives no range).
fn split(batch: usize, chunks: usize) -> Vec<Range<usize>> {
    let chunks = chunks.clamp(1, batch.max(1));
    let (base, extra) = (batch / chunks, batch % chunks);
    let mut start = 0;
    (0..chunks)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .filter(|r| !r.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_batch_in_order_and_balanced() {
        assert_eq!(split(8, 2), vec![0..4, 4..8]);
        assert_eq!(split(5, 2), vec![0..3, 3..5]);
        assert_eq!(split(2, 16), vec![0..1, 1..2]);
        assert_eq!(split(3, 0), vec![0..3]);
        assert!(split(0, 4).is_empty());
        for batch in 0..20 {
            for chunks in 0..6 {
                let ranges = split(batch, chunks);
                let covered: Vec<usize> = ranges.iter().cloned().flatten().collect();
                assert_eq!(covered, (0..batch).collect::<Vec<_>>());
                assert!(ranges.len() <= chunks.max(1));
            }
        }
    }

    #[test]
    fn chunks_run_on_their_own_threads_and_come_back_in_order() {
        let caller = std::thread::current().id();
        let out = map_chunks(10, 3, |r| (r, std::thread::current().id()));
        let ranges: Vec<Range<usize>> = out.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, vec![0..4, 4..7, 7..10]);
        assert_eq!(out[0].1, caller);
        assert!(out[1..].iter().all(|(_, id)| *id != caller));
    }

    #[test]
    #[should_panic(expected = "chunk 4..8 failed")]
    fn a_panicking_chunk_panics_the_caller() {
        map_chunks(8, 2, |r| {
            if r.start > 0 {
                panic!("chunk {r:?} failed");
            }
        });
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn a_split_batch_gives_the_whole_batchs_result() {
        use burn::backend::NdArray;
        use burn::tensor::Distribution;
        type B = NdArray<f32>;
        let device = Default::default();
        let x = Tensor::<B, 2>::random([5, 3], Distribution::Default, &device);
        let context = Tensor::<B, 2>::random([5, 3], Distribution::Default, &device);
        let f = |x: Tensor<B, 2>, c: Tensor<B, 2>| x * 2.0 + c;
        let whole = f(x.clone(), context.clone());
        let split = map_batch(x, context, f);
        assert_eq!(split.dims(), [5, 3]);
        split.into_data().assert_eq(&whole.into_data(), true);
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn split_gradients_are_the_whole_batchs() {
        use burn::backend::{Autodiff, NdArray};
        use burn::nn::{Linear, LinearConfig};
        use burn::tensor::Distribution;
        type B = Autodiff<NdArray<f32>>;
        let device = Default::default();
        let model: Linear<B> = LinearConfig::new(4, 3).init(&device);
        let x = Tensor::<B, 2>::random([7, 4], Distribution::Default, &device);
        let y = Tensor::<B, 2>::random([7, 3], Distribution::Default, &device);
        let loss = |m: &Linear<B>, r: Range<usize>| {
            let (x, y) = (x.clone().slice(r.clone()), y.clone().slice(r));
            (m.forward(x) - y).powi_scalar(2).mean()
        };
        let (whole, grads) = batch_gradients(&model, 7, 1, loss);
        assert_eq!(grads.len(), 2);
        for chunks in [2, 3, 16] {
            let (value, split) = batch_gradients(&model, 7, chunks, loss);
            assert_eq!(
                split.len(),
                2,
                "{chunks} chunks: every parameter gets its gradient"
            );
            assert!((value - whole).abs() < 1e-6, "{chunks}: {value} vs {whole}");
            let tolerance = burn::tensor::Tolerance::absolute(1e-6);
            let id = model.weight.id;
            let (a, b) = (
                grads.get::<NdArray<f32>, 2>(id),
                split.get::<NdArray<f32>, 2>(id),
            );
            a.unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&b.unwrap().into_data(), tolerance);
            let id = model.bias.as_ref().unwrap().id;
            let (a, b) = (
                grads.get::<NdArray<f32>, 1>(id),
                split.get::<NdArray<f32>, 1>(id),
            );
            a.unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&b.unwrap().into_data(), tolerance);
        }
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn cpu_backends_are_host_backends() {
        use burn::backend::{Autodiff, NdArray};
        assert!(is_host::<NdArray<f32>>());
        assert!(is_host::<Autodiff<NdArray<f32>>>());
        #[cfg(feature = "wgpu")]
        assert!(!is_host::<burn::backend::Wgpu>());
    }
}
