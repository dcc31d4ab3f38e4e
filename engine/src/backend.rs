//! Run-time backend choice. Engine code is generic over burn's `AutodiffBackend`; this module
//! turns a [`BackendKind`] from a config file or the command line into one concrete backend,
//! checks that it is compiled in and has a device, and runs a [`BackendTask`] on it.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::render::splat::SplatBackend;
use crate::scene::nerf::HashGridBackend;

/// The compute backends the engine can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CPU through burn's `ndarray` backend: runs everywhere (cargo feature `cpu`).
    #[default]
    Cpu,
    /// Portable GPU through wgpu: Vulkan, Metal, DX12 (cargo feature `wgpu`).
    Wgpu,
    /// NVIDIA GPUs through CUDA: the fast path (cargo feature `cuda`).
    Cuda,
    /// CPU through burn's `flex` backend (cargo feature `flex`): opt-in, for comparison with
    /// `cpu` (docs/benchmarks.md).
    Flex,
}

impl BackendKind {
    /// All kinds, in the order they are listed to users.
    pub const ALL: [BackendKind; 4] = [Self::Cpu, Self::Wgpu, Self::Cuda, Self::Flex];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::Flex => "flex",
        }
    }

    /// Whether this build contains the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Cpu => cfg!(feature = "cpu"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
            Self::Flex => cfg!(feature = "flex"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|k| k.name() == lower || (lower == "ndarray" && *k == Self::Cpu))
            .ok_or_else(|| BackendError::Unknown(s.to_string()))
    }
}

/// Why a backend cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The name matches no backend.
    #[error("unknown backend '{0}': expected one of cpu, wgpu, cuda, flex")]
    Unknown(String),
    /// The backend's cargo feature is off in this build.
    #[error(
        "backend '{0}' is not compiled into this build: rebuild with `--features {0}` (compiled in: {1})"
    )]
    NotCompiled(BackendKind, String),
    /// The backend started but found no usable device.
    #[error("backend '{kind}' found no usable device: {reason}")]
    NoDevice {
        /// The backend.
        kind: BackendKind,
        /// What the driver said.
        reason: String,
    },
}

/// A backend with every custom operation the engine needs: the hash-grid encoding and the
/// Gaussian rasteriser.
pub trait EngineBackend: HashGridBackend + SplatBackend {}
impl<T: HashGridBackend + SplatBackend> EngineBackend for T {}

/// An autodiff backend whose inner backend is an [`EngineBackend`] too: what training runs on.
pub trait EngineAutodiffBackend:
    EngineBackend + AutodiffBackend<InnerBackend: EngineBackend>
{
}
impl<T> EngineAutodiffBackend for T
where
    T: EngineBackend + AutodiffBackend,
    T::InnerBackend: EngineBackend,
{
}

/// Work that runs on whichever backend was chosen at run time.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Runs the work on backend `B` and its `device`.
    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// The backends compiled into this build, comma-separated.
pub fn compiled_backends() -> String {
    let names: Vec<_> = BackendKind::ALL
        .into_iter()
        .filter(|k| k.is_compiled())
        .map(BackendKind::name)
        .collect();
    names.join(", ")
}

/// Runs `task` on `kind`, after checking the backend is compiled in and its device answers.
pub fn run_on<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output, BackendError> {
    match kind {
        #[cfg(feature = "cpu")]
        BackendKind::Cpu => {
            type B = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
            let device = Default::default();
            probe::<B>(kind, &device)?;
            crate::host_memory::keep_freed_memory();
            Ok(task.run::<B>(device))
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            type B = burn::backend::Autodiff<burn::backend::Wgpu<f32, i32>>;
            let device = burn::backend::wgpu::WgpuDevice::default();
            probe::<B>(kind, &device)?;
            Ok(task.run::<B>(device))
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            type B = burn::backend::Autodiff<burn::backend::Cuda<f32, i32>>;
            let device = burn::backend::cuda::CudaDevice::default();
            probe::<B>(kind, &device)?;
            Ok(task.run::<B>(device))
        }
        #[cfg(feature = "flex")]
        BackendKind::Flex => {
            type B = burn::backend::Autodiff<burn::backend::Flex>;
            let device = Default::default();
            probe::<B>(kind, &device)?;
            crate::host_memory::keep_freed_memory();
            Ok(task.run::<B>(device))
        }
        #[allow(unreachable_patterns)]
        _ => Err(BackendError::NotCompiled(kind, compiled_backends())),
    }
}

/// One tiny round trip to the device: a missing driver or adapter panics inside burn, which
/// we turn into an error naming the backend instead of a crash mid-generation.
fn probe<B: Backend>(kind: BackendKind, device: &B::Device) -> Result<(), BackendError> {
    let result = catch_unwind_quietly(|| {
        let x = Tensor::<B, 1>::from_floats([1.0, 2.0], device);
        x.sum().into_scalar().elem::<f32>()
    });
    match result {
        Ok(v) if (v - 3.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(BackendError::NoDevice {
            kind,
            reason: format!("a test sum returned {v} instead of 3"),
        }),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the backend panicked while starting".into());
            Err(BackendError::NoDevice { kind, reason })
        }
    }
}

use burn::tensor::ElementConversion as _;

thread_local! {
    /// Set while this thread runs [`catch_unwind_quietly`].
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `catch_unwind` without the panic message on stderr, for this thread only: the process-wide
/// hook is wrapped once (chaining the one before it) and then never swapped again, so a job
/// on another thread that panics meanwhile still reports it.
fn catch_unwind_quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    static WRAP: std::sync::Once = std::sync::Once::new();
    WRAP.call_once(wrap_panic_hook);
    let was = QUIET.with(|q| q.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result
}

/// Puts a hook in front of the current one that passes on every panic except those of a
/// thread inside [`catch_unwind_quietly`].
fn wrap_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !QUIET.with(std::cell::Cell::get) {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum;
    impl BackendTask for Sum {
        type Output = f32;
        fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> f32 {
            Tensor::<B, 1>::from_floats([1.0, 2.0, 4.0], &device)
                .sum()
                .into_scalar()
                .elem()
        }
    }

    #[test]
    fn a_quiet_probe_silences_only_its_own_thread() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static ELSEWHERE: AtomicUsize = AtomicUsize::new(0);
        static HERE: AtomicUsize = AtomicUsize::new(0);
        // A hook that counts (an app's, say; it passes every panic on), then the quiet
        // wrapper in front of it, as the first probe puts it.
        let inner = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            match info.payload().downcast_ref::<&str>() {
                Some(&"elsewhere") => ELSEWHERE.fetch_add(1, Ordering::SeqCst),
                Some(&"here") => HERE.fetch_add(1, Ordering::SeqCst),
                _ => 0,
            };
            inner(info);
        }));
        wrap_panic_hook();
        let result = catch_unwind_quietly(|| {
            let other = std::thread::spawn(|| panic!("elsewhere"));
            assert!(other.join().is_err());
            panic!("here")
        });
        assert!(result.is_err());
        // The other thread's panic was reported; this thread's, inside, was not.
        assert_eq!(ELSEWHERE.load(Ordering::SeqCst), 1);
        assert_eq!(HERE.load(Ordering::SeqCst), 0);
        // Outside, this thread reports again.
        assert!(!QUIET.with(std::cell::Cell::get));
    }

    #[test]
    fn names_parse_and_unknown_is_named() {
        assert_eq!("CUDA".parse::<BackendKind>().unwrap(), BackendKind::Cuda);
        assert_eq!("ndarray".parse::<BackendKind>().unwrap(), BackendKind::Cpu);
        let e = "metal".parse::<BackendKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown backend 'metal': expected one of cpu, wgpu, cuda, flex"
        );
        let k: BackendKind = serde_json::from_str("\"wgpu\"").unwrap();
        assert_eq!(k, BackendKind::Wgpu);
    }

    #[test]
    fn cpu_runs_and_missing_backends_are_explained() {
        assert_eq!(run_on(BackendKind::Cpu, Sum).unwrap(), 7.0);
        for kind in BackendKind::ALL {
            if !kind.is_compiled() {
                let e = run_on(kind, Sum).unwrap_err();
                assert!(e.to_string().contains("not compiled"), "{e}");
                assert!(e.to_string().contains(&format!("--features {kind}")), "{e}");
            }
        }
    }
}
