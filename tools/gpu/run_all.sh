#!/usr/bin/env bash
# Every GPU measurement of the real-model path in one unattended run under 8 minutes (issue
# 38 item 8). Prepare here with tools/gpu/build.sh (stripped cuda binaries in gpu/, the
# diffusers wheel in .whl/), then run this in the repository root on the GPU machine with
# carry [gpu, .whl]. Results land in $OUT:
#   gpu.txt          the card
#   unet.md          SD 2.1-base UNet forward at batch 2 and 8: PyTorch fp16 (and fp32) vs
#                    burn f32/f16 on the same weights, with the max abs error of each
#   presets.md       the first steps of every real-model preset on random full-size weights,
#                    seconds per step beside the cost model's prediction (`rewardsds bench`)
#   long.md          50 steps of mvdream-fast (the RewardSDS preset meant to take <= 15 min)
#   bench_render.md  the NeRF renderer forward/backward
#   log.txt          everything printed
#
# Dry run on a CPU (it must never be first run on a GPU):
#   BACKEND=cpu TINY=1 BIN=target/release PY=/tmp/ref/bin/python tools/gpu/run_all.sh
# runs every part with the tiny configs and sizes (tools/gpu/README.md).
set -u
BIN=${BIN:-gpu}
BACKEND=${BACKEND:-cuda}
TINY=${TINY:-0}
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
WORK=${WORK:-/tmp/gpu_work}
BUDGET=${BUDGET:-470} # seconds for the whole run; every part's timeout is cut to what is left
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1

# The binaries travel compressed (the carry limit is 64 MiB).
[ -f "$BIN/gpu_bins.tar.xz" ] && tar -xJf "$BIN/gpu_bins.tar.xz" -C "$BIN"

# A binary from $BIN (build.sh puts all there) or, in a cargo target folder, its examples/.
bin() { [ -x "$BIN/$1" ] && echo "$BIN/$1" || echo "$BIN/examples/$1"; }
left() { # $1 the part's own cap: prints min(cap, budget left), at least 1
    local rest=$((BUDGET - SECONDS))
    [ "$rest" -lt 1 ] && rest=1
    [ "$1" -lt "$rest" ] && echo "$1" || echo "$rest"
}
part() { echo; echo "== $* ($((SECONDS)) s in)"; }

part "device"
if [ "$BACKEND" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
else
    echo "backend $BACKEND: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB" | tee "$OUT/gpu.txt"
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$WORK/site" .whl/*.whl \
        && export PYTHONPATH=$WORK/site
fi

part "model configs (no weights: the models keep their random initial weights)"
MODELS=$WORK/models
if [ "$TINY" = 1 ]; then
    $PY tools/gpu/write_model_configs.py --out "$MODELS" --tiny
else
    $PY tools/gpu/write_model_configs.py --out "$MODELS"
fi

part "UNet SD 2.1-base forward: PyTorch reference"
UNET=$WORK/unet_cmp
SMALL=()
DEVICE=()
if [ "$TINY" = 1 ]; then
    SMALL=(--small)
fi
[ "$BACKEND" = cuda ] || DEVICE=(--device cpu)
{
    echo "# UNet forward, burn vs PyTorch (backend $BACKEND${SMALL:+, --small})"
    echo
    timeout "$(left 120)" $PY tools/gpu/unet_reference.py --out "$UNET" "${SMALL[@]}" "${DEVICE[@]}"
    echo
    echo "## burn ($BACKEND)"
    timeout "$(left 120)" "$(bin bench_unet)" --backend "$BACKEND" "${SMALL[@]}" \
        --weights "$UNET/unet/diffusion_pytorch_model.safetensors" \
        --input "$UNET/inputs.safetensors" --output "$UNET/out_burn.safetensors"
    echo
    echo "## parity"
    timeout "$(left 30)" $PY tools/gpu/unet_reference.py --out "$UNET" \
        --compare "$UNET/out_burn.safetensors"
} 2>&1 | tee "$OUT/unet.md"
rm -rf "$UNET" # 3.5 GB of weights

part "presets: first steps on random full-size weights, beside the cost model"
PRESET_ARGS=(--backend "$BACKEND" --models "$MODELS" --random-weights)
[ "$TINY" = 1 ] && PRESET_ARGS+=(--small)
timeout "$(left 170)" "$(bin rewardsds)" bench "${PRESET_ARGS[@]}" --steps 3 --max-seconds 20 \
    2>&1 | tee "$OUT/presets.md"

part "mvdream-fast: 50 steps"
timeout "$(left 130)" "$(bin rewardsds)" bench "${PRESET_ARGS[@]}" --preset mvdream-fast \
    --steps 50 --max-seconds 100 2>&1 | tee "$OUT/long.md"

part "NeRF renderer forward+backward"
RENDER_SIZE=64
[ "$TINY" = 1 ] && RENDER_SIZE=16
timeout "$(left 40)" "$(bin bench_render)" --backend "$BACKEND" --size "$RENDER_SIZE" --iters 5 \
    2>&1 | tee "$OUT/bench_render.md"

part "done"
echo "total $SECONDS s (budget $BUDGET s)"
exit 0
