#!/usr/bin/env bash
# Prepares what tools/gpu/run_all.sh needs on the GPU machine: the cuda build of the
# `rewardsds` binary and two benches (no Bevy), stripped and compressed into gpu/gpu_bins.tar.xz, and the diffusers wheel
# in .whl/ (the machine has torch, safetensors and transformers, not diffusers). Both folders
# are git-ignored; carry them: run(command="tools/gpu/run_all.sh", carry=["gpu", ".whl"]).
# Needs the CUDA toolkit's headers only at run time there (cubecl compiles kernels with NVRTC).
set -euo pipefail
cd "$(dirname "$0")/../.."
EXAMPLES=(bench_unet bench_render)
args=(--bin rewardsds)
for e in "${EXAMPLES[@]}"; do args+=(--example "$e"); done
cargo build --release --no-default-features --features cuda,cli "${args[@]}"
rm -rf gpu && mkdir -p gpu
cp target/release/rewardsds gpu/
for e in "${EXAMPLES[@]}"; do cp "target/release/examples/$e" gpu/; done
strip gpu/rewardsds "${EXAMPLES[@]/#/gpu/}"
tar -cJf gpu/gpu_bins.tar.xz -C gpu rewardsds "${EXAMPLES[@]}"
rm -f gpu/rewardsds "${EXAMPLES[@]/#/gpu/}"
mkdir -p .whl
ls .whl/diffusers-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps diffusers -d .whl
du -ch gpu .whl | tail -1
echo "carry limit 64 MiB: $(du -cm gpu .whl | tail -1 | cut -f1) MiB"
