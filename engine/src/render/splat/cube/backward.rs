//! Backward on the device: one cube per (tile, view), one unit per pixel, walking the tile
//! list back to front in shared-memory batches, starting from the forward's final
//! transmittance and skipping entries past the pixel's last contributor (`host::backward`'s
//! loop, same clamp rule). Many pixels add to the same Gaussian, so the gradient is
//! accumulated with atomic float adds: native where the device has them, otherwise a
//! compare-and-swap loop on the bits. The sum order then varies from run to run (last-bit
//! differences), unlike the host's per-slot reduction.

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::zeros_client;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::super::{
    ALPHA_MAX, CONIC_A, CONIC_B, CONIC_C, DEPTH, MEAN_X, MEAN_Y, OPACITY, OUT, PACK, RED, TILE,
};
use super::rules::alpha_at;
use super::{BATCH, Geometry, tile_cubes};
use crate::cube_atomics::{CasAdd, GradSink, NativeAdd, native_float_atomics};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn backward_kernel<S: GradSink>(
    gaussians: &Tensor<f32>,
    offsets: &Tensor<u32>,
    ids: &Tensor<u32>,
    final_t: &Tensor<f32>,
    last: &Tensor<u32>,
    grad_out: &Tensor<f32>,
    grad: &Tensor<Atomic<S::Elem>>,
    geo: Geometry,
) {
    let mut batch = SharedMemory::<f32>::new(BATCH * PACK);
    let mut batch_ids = SharedMemory::<u32>::new(BATCH);
    let tile = CUBE_POS_X;
    let view = CUBE_POS_Y;
    let x = (tile % geo.tiles_x) * TILE as u32 + UNIT_POS_X;
    let y = (tile / geo.tiles_x) * TILE as u32 + UNIT_POS_Y;
    let inside = x < geo.width && y < geo.height;
    let list = (view * geo.tiles + tile) as usize;
    let start = offsets[list] as usize;
    let end = offsets[list + 1] as usize;
    let gaussian_base = (view * geo.n) as usize;
    let t = UNIT_POS as usize;
    let px = f32::cast_from(x) + 0.5;
    let py = f32::cast_from(y) + 0.5;

    // Outside pixels walk nothing but still help load.
    let mut transmittance = 1.0f32;
    let mut count = 0usize;
    let mut g_r = 0.0f32;
    let mut g_g = 0.0f32;
    let mut g_b = 0.0f32;
    let mut g_d = 0.0f32;
    let mut g_a = 0.0f32;
    if inside {
        let p = (view * geo.height * geo.width + y * geo.width + x) as usize;
        transmittance = final_t[p];
        count = last[p] as usize;
        g_r = grad_out[p * OUT];
        g_g = grad_out[p * OUT + 1];
        g_b = grad_out[p * OUT + 2];
        g_d = grad_out[p * OUT + 3];
        g_a = grad_out[p * OUT + 4];
    }
    // What lies behind the current Gaussian, composited (per channel).
    let mut behind_r = 0.0f32;
    let mut behind_g = 0.0f32;
    let mut behind_b = 0.0f32;
    let mut behind_d = 0.0f32;
    let mut behind_a = 0.0f32;

    // Entries past every pixel's last contributor need no loading: start at the tile's max.
    let mut counts = SharedMemory::<u32>::new(BATCH);
    let mut tile_last = SharedMemory::<u32>::new(1usize);
    counts[t] = count as u32;
    sync_cube();
    if t == 0 {
        let mut most = 0u32;
        for i in 0..BATCH {
            most = max(most, counts[i]);
        }
        tile_last[0] = most;
    }
    sync_cube();

    // Batches from the back: [b0, b1), entry b1 - 1 - j in slot j.
    let mut b1 = min(end, start + tile_last[0] as usize);
    while b1 > start {
        let b0 = select(b1 - start > BATCH, b1 - BATCH, start);
        if t < b1 - b0 {
            let e = b1 - 1 - t;
            let id = ids[e];
            let src = (gaussian_base + id as usize) * PACK;
            batch_ids[t] = id;
            #[unroll]
            for c in 0..PACK {
                batch[t * PACK + c] = gaussians[src + c];
            }
        }
        sync_cube();
        for j in 0..b1 - b0 {
            let k = b1 - 1 - j - start; // position in the list
            if k < count {
                let g = j * PACK;
                let dx = batch[g + MEAN_X] - px;
                let dy = batch[g + MEAN_Y] - py;
                let a = batch[g + CONIC_A];
                let b = batch[g + CONIC_B];
                let c = batch[g + CONIC_C];
                let opacity = batch[g + OPACITY];
                let (alpha, gauss) = alpha_at(dx, dy, a, b, c, opacity);
                if alpha >= 0.0 {
                    transmittance /= 1.0 - alpha; // T_k, before this Gaussian
                    let dst = (gaussian_base + batch_ids[j] as usize) * PACK;
                    let w = alpha * transmittance;
                    let red = batch[g + RED];
                    let green = batch[g + RED + 1];
                    let blue = batch[g + RED + 2];
                    let depth = batch[g + DEPTH];
                    S::add(grad, dst + RED, w * g_r);
                    S::add(grad, dst + RED + 1, w * g_g);
                    S::add(grad, dst + RED + 2, w * g_b);
                    S::add(grad, dst + DEPTH, w * g_d);
                    let mut d_alpha = g_r * (red - behind_r)
                        + g_g * (green - behind_g)
                        + g_b * (blue - behind_b)
                        + g_d * (depth - behind_d)
                        + g_a * (1.0 - behind_a);
                    behind_r = alpha * red + (1.0 - alpha) * behind_r;
                    behind_g = alpha * green + (1.0 - alpha) * behind_g;
                    behind_b = alpha * blue + (1.0 - alpha) * behind_b;
                    behind_d = alpha * depth + (1.0 - alpha) * behind_d;
                    behind_a = alpha + (1.0 - alpha) * behind_a;
                    d_alpha *= transmittance;
                    // Clamped alpha does not move with the parameters.
                    if opacity * gauss < ALPHA_MAX {
                        S::add(grad, dst + OPACITY, d_alpha * gauss);
                        let d_power = d_alpha * alpha;
                        S::add(grad, dst + MEAN_X, d_power * (-a * dx - b * dy));
                        S::add(grad, dst + MEAN_Y, d_power * (-b * dx - c * dy));
                        S::add(grad, dst + CONIC_A, d_power * (-0.5 * dx * dx));
                        S::add(grad, dst + CONIC_B, d_power * (-dx * dy));
                        S::add(grad, dst + CONIC_C, d_power * (-0.5 * dy * dy));
                    }
                }
            }
        }
        sync_cube();
        b1 = b0;
    }
}

/// Gradient of `gaussians [views, n, PACK]` from the output gradient `[views * h * w, OUT]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<R: CubeRuntime>(
    gaussians: &CubeTensor<R>,
    offsets: &CubeTensor<R>,
    ids: &CubeTensor<R>,
    final_t: &CubeTensor<R>,
    last: &CubeTensor<R>,
    grad_out: &CubeTensor<R>,
    geo: Geometry,
) -> CubeTensor<R> {
    let (client, device) = (gaussians.client.clone(), gaussians.device.clone());
    let shape = gaussians.meta.shape().clone();
    let native = native_float_atomics(&client);
    // Zero bits are 0.0f32, so one zeroed buffer serves both sinks; it is read as f32 after.
    let grad = zeros_client(client.clone(), device, shape, DType::F32);
    let args = |grad: &CubeTensor<R>| {
        (
            gaussians.clone().into_tensor_arg(),
            offsets.clone().into_tensor_arg(),
            ids.clone().into_tensor_arg(),
            final_t.clone().into_tensor_arg(),
            last.clone().into_tensor_arg(),
            grad_out.clone().into_tensor_arg(),
            grad.clone().into_tensor_arg(),
        )
    };
    let (g, o, i, f, l, go, gr) = args(&grad);
    let geo_arg = geo.arg::<R>();
    let (cubes, dim) = (tile_cubes(geo), CubeDim::new_2d(TILE as u32, TILE as u32));
    log::debug!(
        "splat backward: {} float atomics",
        if native { "native" } else { "compare-and-swap" }
    );
    unsafe {
        if native {
            backward_kernel::launch_unchecked::<NativeAdd, R>(
                &client, cubes, dim, g, o, i, f, l, go, gr, geo_arg,
            );
        } else {
            backward_kernel::launch_unchecked::<CasAdd, R>(
                &client, cubes, dim, g, o, i, f, l, go, gr, geo_arg,
            );
        }
    }
    grad
}
