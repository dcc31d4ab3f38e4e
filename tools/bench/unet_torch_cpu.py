#!/usr/bin/env python3
"""PyTorch side of the CPU UNet comparison (burn side: `examples/bench_unet.rs --torch`).

Loads a diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors, e.g. the
shipped Tiny World UNet), and times on the CPU, f32, with a fixed thread count:
  - the forward at each batch size,
  - the forward + backward of sum(output) into every parameter and the sample,
on seeded random inputs of the model's own sample size (class labels too when the config has
a projection class embedding). Prints one JSON object per (batch, pass) on stdout:
    {"batch": 2, "pass": "forward", "ms": 27.1}
which `bench_unet --torch PYTHON` reads and puts beside burn's numbers in one table.

Needs torch and diffusers (the reference venv in tools/bench/README.md). Run by hand:
    /tmp/ref/bin/python tools/bench/unet_torch_cpu.py --unet assets/models/tiny-world/unet \
        --batches 2,8 --tokens 16 --threads 2 --backward
"""

import argparse
import json
import sys
import time

import torch
from diffusers import UNet2DConditionModel


def mean_ms(warmup: int, iters: int, run) -> float:
    total = 0.0
    for i in range(warmup + iters):
        start = time.perf_counter()
        run()
        if i >= warmup:
            total += (time.perf_counter() - start) * 1e3
    return total / max(iters, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", required=True, help="diffusers UNet folder")
    parser.add_argument("--batches", default="2,8")
    parser.add_argument("--tokens", type=int, default=77)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--backward", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(args.unet, torch_dtype=torch.float32).eval()
    config = unet.config
    size = config.sample_size
    cross = config.cross_attention_dim
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    class_width = (
        config.projection_class_embeddings_input_dim
        if config.class_embed_type == "projection"
        else None
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{sum(p.numel() for p in unet.parameters())} parameters",
        file=sys.stderr,
    )

    for batch in [int(b) for b in args.batches.split(",")]:
        sample = torch.randn(batch, config.in_channels, size, size)
        context = torch.randn(batch, args.tokens, cross)
        timesteps = torch.full((batch,), 500.0)
        labels = torch.randn(batch, class_width) if class_width else None

        def forward():
            with torch.no_grad():
                unet(sample, timesteps, context, class_labels=labels).sample

        ms = mean_ms(args.warmup, args.iters, forward)
        print(json.dumps({"batch": batch, "pass": "forward", "ms": round(ms, 2)}), flush=True)

        if args.backward:
            leaf = sample.clone().requires_grad_(True)

            def forward_backward():
                unet.zero_grad(set_to_none=True)
                leaf.grad = None
                unet(leaf, timesteps, context, class_labels=labels).sample.sum().backward()

            ms = mean_ms(args.warmup, args.iters, forward_backward)
            print(
                json.dumps({"batch": batch, "pass": "forward+backward", "ms": round(ms, 2)}),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
