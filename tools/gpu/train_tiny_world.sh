#!/usr/bin/env bash
# Trains the Tiny World models on the GPU machine and brings them back through $OUT.
# Expects gpu/tiny_bins.tar.xz (the stripped cuda release build of the train_tiny_world
# example). At most 8 files return, so the folder comes back as two tars (weights of the
# UNet alone, everything else), written even when training stops early.
set -u
OUT=${OUT:?set OUT}
WORK=$(mktemp -d)
tar -xJf gpu/tiny_bins.tar.xz -C "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# CONTINUE=1: keep the shipped CLIPs and continue the shipped UNet, e.g.
#   CONTINUE=1 tools/gpu/train_tiny_world.sh --phases unet,eval \
#     --init-unet assets/models/tiny-world/unet --unet-batch 256
if [ "${CONTINUE:-0}" = 1 ]; then
  cp -r assets/models/tiny-world "$WORK/tiny-world"
fi
timeout "${TRAIN_SECONDS:-540}" "$WORK/train_tiny_world" --backend cuda --preset gpu \
  --out "$WORK/tiny-world" --threads 16 "$@" > "$OUT/train.log" 2>&1
echo "train exit: $?" >> "$OUT/train.log"
tail -n 30 "$OUT/train.log"
cd "$WORK"
tar -cf "$OUT/unet.tar" tiny-world/unet 2>/dev/null
tar -cf "$OUT/rest.tar" --exclude=tiny-world/unet tiny-world 2>/dev/null
ls -la "$OUT"
