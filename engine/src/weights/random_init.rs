//! Benchmarks only: a process-wide switch under which every loader keeps the random initial
//! weights of the model it builds from its config files and reads no weight file. It lets a
//! machine that has no copy of the real weights (a borrowed GPU, no network) time full-size
//! models from their published configs alone; what such a model outputs means nothing.

use std::sync::atomic::{AtomicBool, Ordering};

static RANDOM_INIT: AtomicBool = AtomicBool::new(false);

/// Turns the switch on (or off) for the whole process: from then on [`super::weight_files`]
/// finds no files and [`super::load_safetensors_with`] returns the module as built. For
/// benchmarks (`rewardsds bench --random-weights`); never on in a generation a user runs.
pub fn set_random_init_for_benchmarks(on: bool) {
    RANDOM_INIT.store(on, Ordering::Relaxed);
}

/// Whether [`set_random_init_for_benchmarks`] turned the switch on.
pub fn random_init() -> bool {
    RANDOM_INIT.load(Ordering::Relaxed)
}
