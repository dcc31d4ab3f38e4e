//! The benches' timing loop (included with `#[path = "common/timing.rs"] mod timing;`).

use std::time::Instant;

/// Mean wall time in ms of `run` over `iters` calls, after `warmup` untimed ones (the first
/// calls compile kernels and fill caches). `run` must wait for the device itself.
pub fn mean_ms(warmup: usize, iters: usize, mut run: impl FnMut()) -> f64 {
    let mut total = 0.0;
    for i in 0..warmup + iters {
        let start = Instant::now();
        run();
        if i >= warmup {
            total += start.elapsed().as_secs_f64() * 1e3;
        }
    }
    total / iters.max(1) as f64
}
