//! Models loaded once and shared by the generation jobs that use them.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::config::GenerateConfig;
use super::generator::{GenerateError, guidance_with_models, load_prior, load_reward};
use crate::backend::EngineAutodiffBackend;
use crate::guidance::Guidance;

/// Models loaded once and shared by the jobs that use them (a host keeps one and puts it in
/// every [`JobRequest::models`](super::JobRequest::models)): a multi-gigabyte prior is read from disk by the first job
/// that needs it, and later jobs get a clone, which shares its weights (burn tensors are
/// reference-counted). Keyed by backend type, role (`prior`, `reward`) and the config's spec,
/// so a job on another backend or with another model loads its own. Models stay until
/// [`clear`](Self::clear) or the cache is dropped; jobs running keep their clones.
#[derive(Default)]
pub struct ModelCache {
    // One slot per model, each behind its own lock: a second job that wants a model being
    // loaded waits for that load instead of starting another, while other models load freely.
    // Type-erased because the backend type is only known inside the job (`run_on`).
    slots: Mutex<HashMap<ModelKey, ModelSlot>>,
    loads: AtomicUsize,
}

/// One cached model: empty until loaded, locked while loading.
type ModelSlot = Arc<Mutex<Option<Box<dyn Any + Send>>>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ModelKey {
    backend: TypeId,
    role: &'static str,
    spec: String,
}

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache")
            .field("models", &self.len())
            .field("loads", &self.loads())
            .finish()
    }
}

impl ModelCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Models loaded from disk through this cache so far (each prior and reward counts once).
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::Relaxed)
    }

    /// Models held now (one being loaded, or handed to a job at this instant, is not counted).
    pub fn len(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .values()
            .filter(|slot| {
                // A slot being loaded is locked: it does not hold a model yet.
                slot.try_lock().is_ok_and(|model| model.is_some())
            })
            .count()
    }

    /// Whether no model is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every model held (freeing their memory once running jobs end); the next job
    /// that needs one loads it again.
    pub fn clear(&self) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The guidance for `config`, its prior and reward from the cache.
    pub(super) fn guidance<B: EngineAutodiffBackend>(
        &self,
        config: &GenerateConfig,
        device: &B::Device,
    ) -> Result<Guidance<B>, GenerateError> {
        guidance_with_models::<B>(
            config,
            device,
            |spec| {
                self.get_or_load::<B::InnerBackend, _>("prior", spec, || {
                    load_prior::<B::InnerBackend>(spec, device)
                })
            },
            |spec| {
                self.get_or_load::<B::InnerBackend, _>("reward", spec, || {
                    load_reward::<B::InnerBackend>(spec, device).map(Arc::new)
                })
            },
        )
    }

    /// The model `role` = `spec` on backend `B`: a clone of the cached one, or loaded now.
    fn get_or_load<B: 'static, T: Clone + Send + 'static>(
        &self,
        role: &'static str,
        spec: &str,
        load: impl FnOnce() -> Result<T, GenerateError>,
    ) -> Result<T, GenerateError> {
        let key = ModelKey {
            backend: TypeId::of::<B>(),
            role,
            spec: spec.to_string(),
        };
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        // A poisoned slot is one whose load panicked: it holds nothing, load again.
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(model) = slot.as_ref().and_then(|m| m.downcast_ref::<T>()) {
            return Ok(model.clone());
        }
        let model = load()?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        *slot = Some(Box::new(model.clone()));
        Ok(model)
    }
}
