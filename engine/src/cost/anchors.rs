//! Measured speeds that turn FLOPs into seconds: PyTorch fp16 (diffusers, eager) on one NVIDIA
//! H100 80GB, random weights (../shared/GPU.md; `tools/gpu/run_all.sh` re-measures them).
//! A call of `W` FLOPs takes `max(floor, W / rate)`: the floor is the fixed cost of a call
//! (kernel launches; the SD UNet takes ~28 ms at batch 2 and at 8 alike), the rate its
//! throughput once the card is full.

/// One kind of call's speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    /// Fixed seconds per call.
    pub floor_s: f64,
    /// FLOP per second once the batch fills the card.
    pub rate: f64,
}

impl Anchor {
    /// Seconds of one call of `flops`.
    pub fn seconds(&self, flops: f64) -> f64 {
        self.floor_s.max(flops / self.rate)
    }
}

/// The SD 2.1-base UNet at 64x64: 34.0 / 27.9 / 48.4 ms at batch 2 / 8 / 16, 804 GFLOP per
/// sample: floor 27.9 ms, rate 16 x 804 GFLOP / 48.4 ms = 266 TFLOP/s.
pub const UNET: Anchor = Anchor {
    floor_s: 0.0279,
    rate: 266e12,
};

/// The SD VAE encoder forward + backward to the image at 512 px, batch 1: 30.2 ms for 2,268
/// GFLOP (75 TFLOP/s). No floor measured: the rate alone.
pub const VAE_ENCODE_BACKWARD: Anchor = Anchor {
    floor_s: 0.0,
    rate: 75e12,
};

/// The SD VAE decoder at 512 px: 67.0 / 121.7 ms at batch 4 / 8 for 2,515 GFLOP per image
/// (150 / 165 TFLOP/s): the batch-8 rate.
pub const VAE_DECODE: Anchor = Anchor {
    floor_s: 0.0,
    rate: 165e12,
};

/// CLIP ViT-L/14's image tower at 224 px: 6.9 / 6.8 ms at batch 4 / 8 (162 GFLOP per image):
/// floor 6.8 ms, rate at least 8 x 162 GFLOP / 6.8 ms = 190 TFLOP/s. ImageReward's towers
/// (a ViT-L/16 and a BERT-base) are costed with it: not measured on their own.
pub const REWARD: Anchor = Anchor {
    floor_s: 0.0068,
    rate: 190e12,
};

/// The NeRF's forward + backward, in sample points per second. ASSUMED, not measured: the
/// order of magnitude of a fused hash-grid MLP (instant-ngp, tiny-cuda-nn). burn's measured
/// render on the same card is far slower today (its hash-grid backward goes through the host:
/// docs/benchmarks.md, 315 ms for one 64x64 view at 64 samples per ray).
pub const NERF_SAMPLES_PER_S: f64 = 1e9;
