//! Forward compositing on the device: one cube per (tile, view), one unit per pixel. The
//! tile's sorted list is walked in batches that the cube loads into shared memory together,
//! so each Gaussian is read from global memory once per tile instead of once per pixel.
//! Per pixel the loop is `host::forward`'s: front to back, skip by `alpha_at`, stop before
//! transmittance would fall below `T_MIN`; the cube stops loading once all its pixels stopped.

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::super::{
    CONIC_A, CONIC_B, CONIC_C, DEPTH, MEAN_X, MEAN_Y, OPACITY, OUT, PACK, RED, T_MIN, TILE,
};
use super::rules::alpha_at;
use super::{BATCH, Geometry, tile_cubes, u32_tensor};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel(
    gaussians: &Tensor<f32>,
    offsets: &Tensor<u32>,
    ids: &Tensor<u32>,
    out: &mut Tensor<f32>,
    final_t: &mut Tensor<f32>,
    last: &mut Tensor<u32>,
    geo: Geometry,
) {
    let mut batch = SharedMemory::<f32>::new(BATCH * PACK);
    let mut flags = SharedMemory::<u32>::new(BATCH);
    let mut all_done = SharedMemory::<u32>::new(1usize);
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

    let mut transmittance = 1.0f32;
    let mut acc_r = 0.0f32;
    let mut acc_g = 0.0f32;
    let mut acc_b = 0.0f32;
    let mut acc_d = 0.0f32;
    let mut count = 0u32;
    // Pixels outside the image still load batches for the others.
    let mut done = !inside;

    let mut b0 = start;
    while b0 < end {
        let e = b0 + t;
        if e < end {
            let src = (gaussian_base + ids[e] as usize) * PACK;
            #[unroll]
            for c in 0..PACK {
                batch[t * PACK + c] = gaussians[src + c];
            }
        }
        sync_cube();
        let size = min(end - b0, BATCH);
        let mut j = 0usize;
        while j < size && !done {
            let g = j * PACK;
            let (alpha, _gauss) = alpha_at(
                batch[g + MEAN_X] - px,
                batch[g + MEAN_Y] - py,
                batch[g + CONIC_A],
                batch[g + CONIC_B],
                batch[g + CONIC_C],
                batch[g + OPACITY],
            );
            if alpha >= 0.0 {
                let next = transmittance * (1.0 - alpha);
                if next < T_MIN {
                    done = true;
                } else {
                    let w = alpha * transmittance;
                    acc_r += w * batch[g + RED];
                    acc_g += w * batch[g + RED + 1];
                    acc_b += w * batch[g + RED + 2];
                    acc_d += w * batch[g + DEPTH];
                    transmittance = next;
                    count = (b0 - start + j) as u32 + 1;
                }
            }
            j += 1;
        }
        // Whole-tile early exit: stop loading once every pixel is done.
        flags[t] = select(done, 1u32, 0u32);
        sync_cube();
        if t == 0 {
            let mut sum = 0u32;
            for i in 0..BATCH {
                sum += flags[i];
            }
            all_done[0] = sum;
        }
        sync_cube();
        if all_done[0] == BATCH as u32 {
            b0 = end;
        } else {
            b0 += BATCH;
        }
    }

    if inside {
        let p = (view * geo.height * geo.width + y * geo.width + x) as usize;
        out[p * OUT] = acc_r;
        out[p * OUT + 1] = acc_g;
        out[p * OUT + 2] = acc_b;
        out[p * OUT + 3] = acc_d;
        out[p * OUT + 4] = 1.0 - transmittance;
        final_t[p] = transmittance;
        last[p] = count;
    }
}

/// Pixels `[views * h * w, OUT]`, final transmittance `[views * h * w]` and per-pixel list
/// count `[views * h * w]` (u32) from sorted lists.
pub(crate) fn forward<R: CubeRuntime>(
    gaussians: &CubeTensor<R>,
    offsets: &CubeTensor<R>,
    ids: &CubeTensor<R>,
    geo: Geometry,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let (client, device) = (gaussians.client.clone(), gaussians.device.clone());
    let pixels = (geo.views * geo.width * geo.height) as usize;
    let out = empty_device_dtype(
        client.clone(),
        device.clone(),
        [pixels, OUT].into(),
        DType::F32,
    );
    let final_t = empty_device_dtype(client.clone(), device, [pixels].into(), DType::F32);
    let last = u32_tensor(gaussians, pixels);
    unsafe {
        forward_kernel::launch_unchecked::<R>(
            &client,
            tile_cubes(geo),
            CubeDim::new_2d(TILE as u32, TILE as u32),
            gaussians.clone().into_tensor_arg(),
            offsets.clone().into_tensor_arg(),
            ids.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            final_t.clone().into_tensor_arg(),
            last.clone().into_tensor_arg(),
            geo.arg::<R>(),
        );
    }
    (out, final_t, last)
}
