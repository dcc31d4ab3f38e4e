//! The NeRF as a [`DensityField`] and [`AlbedoField`].

use burn::module::{AutodiffModule, Module};
use burn::tensor::{Tensor, TensorData};

use super::{Aabb, AlbedoField, DensityField};
use crate::backend::{EngineAutodiffBackend, EngineBackend};
use crate::scene::nerf::Nerf;

/// Points per forward pass unless set otherwise: a hash-grid NeRF with threestudio's default
/// encoding needs about 1 KiB per point, so 64 Ki points stay well under 100 MiB.
pub const DEFAULT_NERF_CHUNK: usize = 1 << 16;

/// A trained NeRF, queried without gradients in batches of at most `chunk` points.
///
/// Build it from the training model with [`from_autodiff`](Self::from_autodiff): queries then
/// run on the inner backend, so no autodiff graph is recorded and memory stays bounded.
#[derive(Debug, Clone)]
pub struct NerfField<B: EngineBackend> {
    nerf: Nerf<B>,
    device: B::Device,
    chunk: usize,
}

impl<B: EngineBackend> NerfField<B> {
    /// Wraps a NeRF that is already on a non-autodiff backend.
    pub fn new(nerf: Nerf<B>) -> Self {
        let device = nerf.devices().into_iter().next().unwrap_or_default();
        Self {
            nerf,
            device,
            chunk: DEFAULT_NERF_CHUNK,
        }
    }

    /// Sets the number of points per forward pass (at least 1).
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// The region the NeRF models: the cube `[-radius, radius]^3`.
    pub fn bounds(&self) -> Aabb {
        Aabb::cube(self.nerf.radius())
    }

    /// The wrapped NeRF.
    pub fn nerf(&self) -> &Nerf<B> {
        &self.nerf
    }

    fn query<const D: usize>(
        &self,
        points: &[[f32; 3]],
        run: impl Fn(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Vec<[f32; D]> {
        let mut out = Vec::with_capacity(points.len());
        for batch in points.chunks(self.chunk) {
            let flat: Vec<f32> = batch.iter().flatten().copied().collect();
            // [n, 3] -> [n, D]
            let x =
                Tensor::<B, 2>::from_data(TensorData::new(flat, [batch.len(), 3]), &self.device);
            let values: Vec<f32> = run(x)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("float tensor data");
            out.extend(values.chunks_exact(D).map(|v| {
                let mut a = [0.0; D];
                a.copy_from_slice(v);
                a
            }));
        }
        out
    }
}

impl<B: EngineBackend> NerfField<B> {
    /// Wraps the training model: its inner-backend copy (no autodiff), on the same device.
    pub fn from_autodiff<AD>(nerf: &Nerf<AD>) -> Self
    where
        AD: EngineAutodiffBackend<InnerBackend = B>,
    {
        Self::new(nerf.valid())
    }
}

impl<B: EngineBackend> DensityField for NerfField<B> {
    fn density(&self, points: &[[f32; 3]]) -> Vec<f32> {
        self.query::<1>(points, |x| self.nerf.density(x))
            .into_iter()
            .map(|[d]| d)
            .collect()
    }
}

impl<B: EngineBackend> AlbedoField for NerfField<B> {
    fn albedo(&self, points: &[[f32; 3]]) -> Vec<[f32; 3]> {
        self.query::<3>(points, |x| self.nerf.query(x).albedo)
    }
}
