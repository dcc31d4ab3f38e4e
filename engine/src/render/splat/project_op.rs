//! The host projection ([`super::project_host`]) as a custom burn operation with its
//! hand-written backward, for the backends whose rasteriser runs on the host too. Backends
//! that answer `None` (the CubeCL ones) project with tensor ops instead.

// The host path serves the CPU backends and the fused GPU backends; a GPU build without
// `fusion` (cuda or wgpu alone, e.g. tools/gpu/build.sh) compiles it unused.
#![cfg_attr(
    not(any(feature = "cpu", feature = "flex", feature = "fusion")),
    allow(dead_code, unused_imports, unused_macros)
)]

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use super::project_host::{self, ProjectInputs, ViewConstants};

/// The projection's inputs as backend tensors: means `[N, 3]`, rotations `[N, 4]`, scales
/// `[N, 3]`, colour `[1 or views, N, 3]`, opacity `[N, 1]`, probe `[views, N, 2]`.
#[derive(Debug, Clone)]
pub struct ProjectTensors<B: Backend> {
    /// Centres.
    pub means: FloatTensor<B>,
    /// Quaternions (w, x, y, z).
    pub rotations: FloatTensor<B>,
    /// Standard deviations.
    pub scales: FloatTensor<B>,
    /// Colour.
    pub rgb: FloatTensor<B>,
    /// Opacity in [0, 1].
    pub opacity: FloatTensor<B>,
    /// Added to the screen-space means (zeros when nothing reads its gradient).
    pub probe: FloatTensor<B>,
}

/// What the backward needs: the inputs on the host and the views.
#[derive(Debug)]
pub struct ProjectState {
    inputs: ProjectInputs,
    views: Vec<ViewConstants>,
    /// Shapes of the six inputs, in [`ProjectTensors`]'s order.
    shapes: [Vec<usize>; 6],
}

/// Backends that can project Gaussians with the host kernel.
pub trait ProjectBackend: Backend {
    /// Whether [`splat_project`](Self::splat_project) runs the host kernel here (else
    /// [`super::project`] goes straight to tensor ops).
    fn host_projection() -> bool;

    /// `[views, N, PACK]` and the backward's state, or `None` where tensor ops should run.
    fn splat_project(
        inputs: ProjectTensors<Self>,
        views: &[ViewConstants],
    ) -> Option<(FloatTensor<Self>, Arc<ProjectState>)>;

    /// The six inputs' gradients from the output's; only called on backends whose
    /// [`splat_project`](Self::splat_project) answered `Some`.
    fn splat_project_backward(
        state: &ProjectState,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 6];
}

fn upload<B: Backend>(data: Vec<f32>, shape: &[usize], device: &B::Device) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(data, shape.to_vec()), device)
}

/// The host kernel behind a backend, given its download function.
pub(super) fn host_project<B: Backend>(
    inputs: ProjectTensors<B>,
    views: &[ViewConstants],
    download: fn(FloatTensor<B>) -> Vec<f32>,
) -> (FloatTensor<B>, Arc<ProjectState>) {
    use burn::tensor::TensorMetadata;
    let device = B::float_device(&inputs.means);
    let shapes = [
        &inputs.means,
        &inputs.rotations,
        &inputs.scales,
        &inputs.rgb,
        &inputs.opacity,
        &inputs.probe,
    ]
    .map(|t| t.shape().to_vec());
    let host = ProjectInputs {
        means: download(inputs.means),
        rotations: download(inputs.rotations),
        scales: download(inputs.scales),
        rgb: download(inputs.rgb),
        opacity: download(inputs.opacity),
        probe: Some(download(inputs.probe)),
    };
    let out = project_host::forward(&host, views);
    let n = host.len();
    let shape = [views.len(), n, super::PACK];
    let state = ProjectState {
        inputs: host,
        views: views.to_vec(),
        shapes,
    };
    (upload::<B>(out, &shape, &device), Arc::new(state))
}

pub(super) fn host_project_backward<B: Backend>(
    state: &ProjectState,
    grad: FloatTensor<B>,
    download: fn(FloatTensor<B>) -> Vec<f32>,
) -> [FloatTensor<B>; 6] {
    let device = B::float_device(&grad);
    let g = project_host::backward(&state.inputs, &state.views, &download(grad));
    let probe = g.probe.unwrap_or_default();
    let parts = [g.means, g.rotations, g.scales, g.rgb, g.opacity, probe];
    let mut shapes = state.shapes.iter();
    parts.map(|data| {
        let shape = shapes.next().expect("six shapes");
        upload::<B>(data, shape, &device)
    })
}

#[derive(Debug)]
struct ProjectBackward;

impl<B: ProjectBackend> Backward<B, 6> for ProjectBackward {
    type State = Arc<ProjectState>;

    fn backward(
        self,
        ops: Ops<Self::State, 6>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        if ops.parents.iter().all(Option::is_none) {
            return;
        }
        let input_grads = B::splat_project_backward(&ops.state, grad);
        for (parent, g) in ops.parents.iter().zip(input_grads) {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, g);
            }
        }
    }
}

impl<B: ProjectBackend, C: CheckpointStrategy> ProjectBackend for Autodiff<B, C> {
    fn host_projection() -> bool {
        B::host_projection()
    }

    fn splat_project(
        inputs: ProjectTensors<Self>,
        views: &[ViewConstants],
    ) -> Option<(FloatTensor<Self>, Arc<ProjectState>)> {
        let nodes = [
            inputs.means.node.clone(),
            inputs.rotations.node.clone(),
            inputs.scales.node.clone(),
            inputs.rgb.node.clone(),
            inputs.opacity.node.clone(),
            inputs.probe.node.clone(),
        ];
        let inner = ProjectTensors {
            means: inputs.means.primitive,
            rotations: inputs.rotations.primitive,
            scales: inputs.scales.primitive,
            rgb: inputs.rgb.primitive,
            opacity: inputs.opacity.primitive,
            probe: inputs.probe.primitive,
        };
        let (out, state) = B::splat_project(inner, views)?;
        let out = match ProjectBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state.clone(), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Some((out, state))
    }

    fn splat_project_backward(
        state: &ProjectState,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 6] {
        // No second derivatives: the gradient is a constant of the graph.
        B::splat_project_backward(state, grad.primitive)
            .map(<Self as burn::tensor::backend::AutodiffBackend>::from_inner)
    }
}

/// Wraps the primitives of a float tensor for the op.
pub(super) fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// The op's output as a tensor.
pub(super) fn tensor<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 3> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}
