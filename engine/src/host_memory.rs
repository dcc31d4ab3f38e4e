//! Host memory reuse for the CPU backends. They free and allocate tensor buffers of the same
//! sizes every step; glibc's malloc hands large freed blocks straight back to the kernel
//! (`munmap`, heap trimming), so every step faults the same pages in again. On the 2-core
//! machine that kernel time was 20-40% of a generation or training step (docs/benchmarks.md).

/// Threshold below which glibc serves allocations from its heap instead of `mmap`: the
/// largest it accepts on 64-bit (`HEAP_MAX_SIZE / 2`), so nearly every buffer is reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Asks the C allocator to keep freed memory for reuse instead of returning it to the
/// kernel: the process keeps its peak heap until it exits, and stops paying page faults for
/// it on every step. Process-wide; called by [`crate::backend::run_on`] for host backends.
/// Returns whether the allocator took the settings (only glibc on Linux has them; elsewhere
/// this does nothing and returns `false`).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes glibc's tuning parameters; any value is valid input
        // (out-of-range ones are refused with a 0 return), and it is thread-safe.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_the_settings() {
        let taken = keep_freed_memory();
        assert_eq!(taken, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Idempotent: a second backend start sets the same values.
        assert_eq!(keep_freed_memory(), taken);
    }
}
