#!/usr/bin/env python3
"""Reference FLOP counts for the cost model (`engine/src/cost/`), from PyTorch's own counter.

Builds each full-size model on the meta device (nothing allocated, no weights needed) and
counts one forward with `torch.utils.flop_counter.FlopCounterMode` (matrix products,
convolutions and attention; 2 FLOPs per multiply-add; elementwise ops are not counted). The
counts land in engine/tests/fixtures/flop_counts.json with the configs they were taken from, and
`cargo test -p rewardsds_engine --lib cost` checks the engine's analytic counts against them.

    /tmp/ref/bin/python tools/cost/torch_flop_counts.py --mvdream /tmp/mvdream

Needs torch, diffusers, transformers (the venv of tools/bench/README.md); `--mvdream` points at a
checkout of bytedance/MVDream (see tools/fixtures/make_mvdream_fixtures.py) for its UNet, left
out without it.
"""
import argparse
import importlib.util
import json
import os
import sys
import types

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "gpu"))
from unet_reference import SD21_BASE  # noqa: E402

# stabilityai/stable-diffusion-2-1-base vae/config.json (architecture fields).
SD_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}

# openai/clip-vit-large-patch14 vision_config (architecture fields).
CLIP_VIT_L14 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            fn()
    return int(counter.get_total_flops())


def count_backward(fn) -> int:
    """FLOPs of forward + backward w.r.t. the input only (the VAE encoder under SDS)."""
    with FlopCounterMode(display=False) as counter:
        fn().sum().backward()
    return int(counter.get_total_flops())


def unet_counts() -> dict:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_BASE).eval()
        out = {}
        for size in (32, 64):
            x = torch.randn(1, 4, size, size)
            t = torch.tensor([500])
            ctx = torch.randn(1, 77, SD21_BASE["cross_attention_dim"])
            out[str(size)] = count(lambda: unet(x, t, encoder_hidden_states=ctx))
    return {"config": SD21_BASE, "tokens": 77, "forward_per_sample": out}


def vae_counts() -> dict:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE).eval()
        out = {}
        for size in (256, 512):
            img = torch.randn(1, 3, size, size)
            lat = torch.randn(1, 4, size // 8, size // 8)
            out[str(size)] = {
                "encode": count(lambda: vae.encode(img).latent_dist.mean),
                "decode": count(lambda: vae.decode(lat).sample),
            }
            img.requires_grad_(True)
            vae.requires_grad_(False)
            out[str(size)]["encode_with_backward"] = count_backward(
                lambda: vae.encode(img).latent_dist.mean
            )
    return {"config": SD_VAE, "per_image": out}


def taesd_counts() -> dict:
    from diffusers import AutoencoderTiny

    with torch.device("meta"):
        taesd = AutoencoderTiny().eval()
        out = {}
        for side in (32, 64):
            lat = torch.randn(1, 4, side, side)
            out[str(side)] = count(lambda: taesd.decode(lat).sample)
    return {"config": "diffusers AutoencoderTiny defaults (madebyollin/taesd)", "decode_per_latent_side": out}


def clip_counts() -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_L14)).eval()
        img = torch.randn(1, 3, 224, 224)
        flops = count(lambda: model(pixel_values=img).image_embeds)
    return {"config": CLIP_VIT_L14, "forward_per_image": flops}


def mvdream_counts(root: str) -> dict:
    # Import MVDream's openaimodel without its package __init__ (as make_mvdream_fixtures.py).
    sys.path.insert(0, root)
    pkg = types.ModuleType("mvdream")
    pkg.__path__ = [os.path.join(root, "mvdream")]
    sys.modules["mvdream"] = pkg
    from mvdream.ldm.modules.diffusionmodules.openaimodel import MultiViewUNetModel

    config = dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=320,
        attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4],
        num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True,
        transformer_depth=1, context_dim=1024, use_checkpoint=False, legacy=False, camera_dim=16,
    )
    with torch.device("meta"):
        unet = MultiViewUNetModel(**config).eval()
        out = {}
        for size in (32, 64):
            frames = 4
            x = torch.randn(frames, 4, size, size)
            t = torch.full((frames,), 500)
            ctx = torch.randn(frames, 77, 1024)
            cam = torch.randn(frames, 16)
            out[str(size)] = count(
                lambda: unet(x, t, context=ctx, camera=cam, num_frames=frames)
            ) // frames
    return {"config": config, "tokens": 77, "num_frames": 4, "forward_per_sample": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mvdream", help="checkout of bytedance/MVDream")
    parser.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(__file__), "..", "..", "engine", "tests", "fixtures", "flop_counts.json"
        ),
    )
    args = parser.parse_args()
    counts = {
        "torch": torch.__version__,
        "sd21_unet": unet_counts(),
        "sd_vae": vae_counts(),
        "clip_vit_l14": clip_counts(),
        "taesd": taesd_counts(),
    }
    if args.mvdream:
        os.environ.setdefault("XFORMERS_DISABLED", "1")
        counts["mvdream_unet"] = mvdream_counts(args.mvdream)
    with open(args.out, "w") as f:
        json.dump(counts, f, indent=1)
    print(json.dumps(counts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
