#!/usr/bin/env bash
# Every GPU check of a session in one device call (see ../shared/GPU.md): build here with
#   cargo build --release --no-default-features --features cuda \
#     --example bench_render --example fit_scene --example bench_unet
# copy the stripped binaries to gpu/ (git-ignored) and the diffusers wheel to .whl/, then run
# this script there with carry [gpu, .whl]. Results land in $OUT.
set -u
BIN=${BIN:-gpu}
# The binaries travel compressed (the carry limit is 64 MiB).
[ -f "$BIN/gpu_bins.tar.xz" ] && tar -xJf "$BIN/gpu_bins.tar.xz" -C "$BIN"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

echo "== NeRF render forward+backward (cuda)" | tee "$OUT/bench_render.md"
timeout 90 "$BIN/bench_render" --backend cuda --size 64 --iters 10 2>&1 | tee -a "$OUT/bench_render.md"

echo "== fit_scene 64x64 (cuda)" | tee "$OUT/fit_scene.txt"
timeout 110 "$BIN/fit_scene" --backend cuda --size 64 --steps 600 --rays 4096 --out "$OUT/fit" 2>&1 | tee -a "$OUT/fit_scene.txt"

echo "== UNet SD 2.1-base: PyTorch reference" | tee "$OUT/unet.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
timeout 150 python3 tools/gpu/unet_reference.py --out /tmp/unet_cmp 2>&1 | tee -a "$OUT/unet.txt"
echo "== UNet SD 2.1-base: burn cuda" | tee -a "$OUT/unet.txt"
timeout 160 "$BIN/bench_unet" --backend cuda \
  --weights /tmp/unet_cmp/unet/diffusion_pytorch_model.safetensors \
  --input /tmp/unet_cmp/inputs.safetensors --output /tmp/unet_cmp/out_burn.safetensors 2>&1 | tee -a "$OUT/unet.txt"
timeout 40 python3 tools/gpu/unet_reference.py --out /tmp/unet_cmp --compare /tmp/unet_cmp/out_burn.safetensors 2>&1 | tee -a "$OUT/unet.txt"
cp /tmp/unet_cmp/torch_timings.md "$OUT/" 2>/dev/null
exit 0
