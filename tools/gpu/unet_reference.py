#!/usr/bin/env python3
"""PyTorch side of the UNet GPU comparison (burn side: `examples/bench_unet.rs`).

1. Builds the diffusers UNet2DConditionModel with SD 2.1-base's config (or a tiny one with
   --small), gives it seeded random weights (every parameter, matrices ~ N(0, 1/fan_in), norm
   scales ~ 1 + N(0, 0.04)), and saves it in the diffusers layout, fp32:
       OUT/unet/config.json, OUT/unet/diffusion_pytorch_model.safetensors
2. Saves seeded inputs at the parity batch and the model's outputs on them:
       OUT/inputs.safetensors: sample, timesteps, encoder_hidden_states,
                               reference_out (fp32 forward), reference_out_fp16 (fp16, as f32)
3. Times the fp16 (and, with --fp32, fp32) forward at each --batches size (64x64 latents and
   77 tokens for SD 2.1-base), prints a Markdown table and writes it to OUT/torch_timings.md.

With --compare FILE (an output written by `bench_unet --output FILE`), it instead prints the
max abs error of FILE's `out` against reference_out and reference_out_fp16 in OUT.

One GPU run (see the lead's notes in GPU.md; diffusers must be installed from its wheel there):
    python tools/gpu/unet_reference.py --out /tmp/unet_cmp
    ./bench_unet --backend cuda --weights /tmp/unet_cmp/unet/diffusion_pytorch_model.safetensors \
        --input /tmp/unet_cmp/inputs.safetensors --output /tmp/unet_cmp/out_burn.safetensors
    python tools/gpu/unet_reference.py --out /tmp/unet_cmp --compare /tmp/unet_cmp/out_burn.safetensors
On a CPU, add --small to both (and --device cpu here) to check the plumbing in seconds.
"""

import argparse
import json
import math
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

# stabilityai/stable-diffusion-2-1-base unet/config.json (architecture fields).
SD21_BASE = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=[5, 10, 20, 20],
    use_linear_projection=True,
)

# The same architecture scaled down (bench_unet --small builds the identical config).
SMALL = dict(
    SD21_BASE,
    sample_size=16,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 64],
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=[2, 4],
)


def randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                value = (1.0 + 0.2 * noise) if name.endswith("weight") else 0.2 * noise
            else:
                value = noise / math.sqrt(p[0].numel())
            p.copy_(value)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_forward(unet, batch, config, tokens, dtype, device, warmup, iters):
    gen = torch.Generator(device="cpu").manual_seed(batch)
    size = config["sample_size"]
    sample = torch.randn(batch, 4, size, size, generator=gen).to(device, dtype)
    ehs = torch.randn(batch, tokens, config["cross_attention_dim"], generator=gen).to(device, dtype)
    t = torch.full((batch,), 500.0, device=device)
    with torch.inference_mode():
        for _ in range(warmup):
            unet(sample, t, ehs)
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            unet(sample, t, ehs)
        sync(device)
    return (time.perf_counter() - start) / iters * 1e3


def compare(out_dir: str, burn_file: str) -> int:
    ref = load_file(os.path.join(out_dir, "inputs.safetensors"))
    burn = load_file(burn_file)["out"].float()
    print("| burn output vs | max abs error | max abs reference |")
    print("|---|---|---|")
    for label, key in (("torch fp32", "reference_out"), ("torch fp16", "reference_out_fp16")):
        r = ref[key].float()
        err = (burn - r).abs().max().item()
        print(f"| {label} | {err:.3e} | {r.abs().max().item():.3f} |")
    fp = (ref["reference_out"] - ref["reference_out_fp16"]).abs().max().item()
    print(f"(torch fp16 vs torch fp32: {fp:.3e})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--small", action="store_true", help="tiny config (CPU check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="2,8", help="timed batch sizes, comma-separated")
    parser.add_argument("--parity-batch", type=int, default=2, help="batch of the saved inputs")
    parser.add_argument("--tokens", type=int, default=77)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--fp32", action="store_true", help="also time the fp32 forward")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", metavar="FILE", help="compare a bench_unet --output file")
    args = parser.parse_args()

    if args.compare:
        return compare(args.out, args.compare)

    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # fp16 `.to()` casts are intended here

    config = SMALL if args.small else SD21_BASE
    device = args.device
    torch.manual_seed(args.seed)
    unet = UNet2DConditionModel(**config).eval()
    randomise(unet, args.seed)
    n_params = sum(p.numel() for p in unet.parameters())
    unet_dir = os.path.join(args.out, "unet")
    unet.save_pretrained(unet_dir, safe_serialization=True)  # fp32, diffusers layout

    gen = torch.Generator().manual_seed(args.seed + 1)
    b, size = args.parity_batch, config["sample_size"]
    inputs = {
        "sample": torch.randn(b, 4, size, size, generator=gen),
        "timesteps": torch.linspace(999.0, 1.0, b),
        "encoder_hidden_states": torch.randn(b, args.tokens, config["cross_attention_dim"], generator=gen),
    }
    unet = unet.to(device)
    with torch.inference_mode():
        on = {k: v.to(device) for k, v in inputs.items()}
        ref32 = unet(on["sample"], on["timesteps"], on["encoder_hidden_states"]).sample.float().cpu()
        unet_fp16 = unet.half()
        ref16 = unet_fp16(
            on["sample"].half(), on["timesteps"], on["encoder_hidden_states"].half()
        ).sample.float().cpu()
    save_file(
        {**inputs, "reference_out": ref32.contiguous(), "reference_out_fp16": ref16.contiguous()},
        os.path.join(args.out, "inputs.safetensors"),
    )

    name = "tiny (--small)" if args.small else "SD 2.1-base"
    rows = [
        f"PyTorch {torch.__version__} on {torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}, "
        f"{name} UNet, {n_params:,} parameters, {size}x{size} latents, {args.tokens} tokens",
        "",
        "| framework | dtype | batch | forward (ms) |",
        "|---|---|---|---|",
    ]
    dtypes = [("fp16", torch.float16)] + ([("fp32", torch.float32)] if args.fp32 else [])
    for label, dtype in dtypes:
        model = unet.to(dtype)
        for batch in (int(x) for x in args.batches.split(",")):
            ms = time_forward(model, batch, config, args.tokens, dtype, device, args.warmup, args.iters)
            rows.append(f"| torch {label} | {label} | {batch} | {ms:.1f} |")
    table = "\n".join(rows)
    print(table)
    with open(os.path.join(args.out, "torch_timings.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump({"config": config, "params": n_params, "device": device}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
