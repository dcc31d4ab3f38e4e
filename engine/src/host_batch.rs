//! Splitting a batch across the CPU's cores on host backends.
//!
//! burn's CPU backend runs each tensor op on one thread here (its threaded GEMM made whole
//! generations slower, docs/benchmarks.md: most ops are too small to split), so a batched
//! forward such as the UNet's uses one core of several. Independent samples can instead run as
//! independent forwards, one chunk of the batch per core. GPU backends get one chunk: the
//! device already runs the batch in parallel.

use std::any::TypeId;
use std::ops::Range;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

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
    let batch = x.dims()[0];
    let mut parts = map_chunks(batch, chunks_for::<B>(), |r| {
        if r.len() == batch {
            return f(x.clone(), context.clone());
        }
        f(
            x.clone().narrow(0, r.start, r.len()),
            context.clone().narrow(0, r.start, r.len()),
        )
    });
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    Tensor::cat(parts, 0)
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
    fn cpu_backends_are_host_backends() {
        use burn::backend::{Autodiff, NdArray};
        assert!(is_host::<NdArray<f32>>());
        assert!(is_host::<Autodiff<NdArray<f32>>>());
        #[cfg(feature = "wgpu")]
        assert!(!is_host::<burn::backend::Wgpu>());
    }
}
