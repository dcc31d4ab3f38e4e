#!/usr/bin/env python3
"""Random full-size weights in the real on-disk layouts, for a CPU rehearsal of the
real-model path (tools/rehearsal/run.sh runs `generate` on them).

    /tmp/ref/bin/python tools/rehearsal/make_random_weights.py [--out /tmp/rehearsal] \
        [--only sd21|mvdream|mvdream-original|image-reward] [--seed 0]

Needs torch, diffusers, transformers, open_clip (for its bundled BPE file and the OpenCLIP text
tower), safetensors, omegaconf, einops and, for the ImageReward model, the `image-reward`
package (installed --no-deps) with timm and fairscale; MVDream's reference code extracted at
--mvdream (default /tmp/mvdream, the folder that holds `mvdream/`). Nothing is downloaded.

Disk: about 16 GB under --out when all four are written (sd21-base 5.2 GB, mvdream 3.5 GB
of its own UNet, its text encoder / tokenizer / VAE are symlinks into sd21-base, the original
MVDream .pt 5.2 GB, ImageReward 1.8 GB). Peak RAM about 9 GB (the original MVDream checkpoint:
UNet + VAE + the full OpenCLIP ViT-H/14 text tower held at once). Models are written one at a
time and freed; `--only` writes one of them.

EVERY WEIGHT IS RANDOM (seeded): these folders prove that the loaders read the real layouts at
the real sizes and how long a step takes, nothing about quality. The configs are the published
files' values (written out below from the published repos, cross-checked against what the
installed diffusers/transformers build from them).

What is written (under --out):

sd21-base/   as `stabilityai/stable-diffusion-2-1-base` lays it out
    model_index.json, scheduler/scheduler_config.json (PNDMScheduler, as published; scaled_linear
    0.00085..0.012, 1000 steps, epsilon), text_encoder/{config.json,model.safetensors}
    (transformers CLIPTextModel: OpenCLIP ViT-H/14's text tower cut to 23 layers, as SD 2.x
    ships it; the published config's bos/eos ids 0/2 kept; the file carries the int64
    `text_model.embeddings.position_ids` buffer as transformers 4.25 saved it),
    tokenizer/{vocab.json,merges.txt,tokenizer_config.json,special_tokens_map.json} (CLIP BPE
    built from open_clip's bpe_simple_vocab_16e6.txt.gz as OpenAI CLIP builds its encoder;
    pad "!" in special_tokens_map.json, "<|endoftext|>" in tokenizer_config.json, as
    published: transformers lets the former win), unet/{config.json,
    diffusion_pytorch_model.safetensors}, vae/{config.json,diffusion_pytorch_model.safetensors},
    feature_extractor/preprocessor_config.json. config.json files are the published ones
    (diffusers 0.10.0.dev0 keys: no `scaling_factor` in vae/, so 0.18215 is the reader's default);
    weights fp32 safetensors via save_pretrained(safe_serialization=True).

mvdream/     as `ashawkey/mvdream-sd2.1-diffusers` lays it out
    model_index.json (MVDreamPipeline), unet/config.json (`_class_name: MultiViewUNetModel`,
    MVDream's sd-v2-base.yaml unet params minus the keys the converter pops) and
    unet/diffusion_pytorch_model.safetensors (MVDream's own MultiViewUNetModel, built at full
    size from /tmp/mvdream, state dict under its LDM names without `model.diffusion_model.`,
    as the converter saves it), scheduler/scheduler_config.json (DDIMScheduler as the converter
    builds it); text_encoder/, tokenizer/, vae/ are symlinks to sd21-base's (the converter takes
    SD 2.1's text encoder and tokenizer; its VAE is SD's first stage; random weights anyway).

mvdream-original/
    sd-v2.1-base-4view.pt: MVDream's single-file checkpoint: LatentDiffusionInterface's flat
    state dict, fp32, as `mvdream.model_zoo.build_model` reads it
    (`model.load_state_dict(torch.load(ckpt_path, map_location="cpu"))`, strict: no
    {"state_dict": ...} wrapper, which that call would refuse): `model.diffusion_model.*`
    (UNet), `first_stage_model.*` (VAE, LDM names), `cond_stage_model.model.*` (OpenCLIP
    ViT-H/14 text tower under open_clip's names, all 24 resblocks: MVDream runs 23,
    "penultimate"; no `visual`, which FrozenOpenCLIPEmbedder deletes) and the 12 schedule
    buffers. tokenizer/ is a symlink to sd21-base's tokenizer (the same BPE open_clip uses).

image-reward/
    ImageReward.pt (torch.save of the `image-reward` package's ImageReward(...).state_dict(),
    fp32, as the published file: BLIP ViT-L/16 at 224 + BERT-base with cross-attention
    + MLP head), med_config.json (BLIP's published med_config), vocab.txt (SYNTHETIC: 30522
    lines, bert-base-uncased's special tokens at its ids, [PAD]=0 [unusedN] 1-99, [UNK]=100,
    [CLS]=101, [SEP]=102, [MASK]=103, [unusedN] 104-998, then single characters, common
    lower-case English words, ## wordpieces, and made-up filler words: the real vocab cannot be
    downloaded here), tokenizer_config.json.
"""

import argparse
import collections
import gc
import gzip
import importlib
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tools" / "fixtures"))

# ---------------------------------------------------------------------------------------------
# Published configs (stabilityai/stable-diffusion-2-1-base, diffusers 0.10.0.dev0 /
# transformers 4.25.0.dev0 era files).
# ---------------------------------------------------------------------------------------------

SD21_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.10.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

SD21_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "upcast_attention": False,
    "use_linear_projection": True,
}

SD21_VAE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SD21_TEXT_ENCODER = {
    "_name_or_path": "hf-models/stable-diffusion-v2-base/text_encoder",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "torch_dtype": "float32",
    "transformers_version": "4.25.0.dev0",
    "vocab_size": 49408,
}

SD21_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.10.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def _added_token(content, type_field=False):
    token = {
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }
    return {"__type": "AddedToken", **token} if type_field else token


SD21_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": _added_token("<|startoftext|>", True),
    "do_lower_case": True,
    "eos_token": _added_token("<|endoftext|>", True),
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "hf-models/stable-diffusion-v2-base/tokenizer",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": _added_token("<|endoftext|>", True),
}

SD21_SPECIAL_TOKENS_MAP = {
    "bos_token": _added_token("<|startoftext|>"),
    "eos_token": _added_token("<|endoftext|>"),
    "pad_token": "!",
    "unk_token": _added_token("<|endoftext|>"),
}

SD21_FEATURE_EXTRACTOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

# ashawkey/mvdream-sd2.1-diffusers
MVDREAM_MODEL_INDEX = {
    "_class_name": "MVDreamPipeline",
    "_diffusers_version": "0.25.0",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["mv_unet", "MultiViewUNetModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# MVDream's configs/sd-v2-base.yaml (unet_config.params), key order as there.
MVDREAM_UNET_PARAMS = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 4, 4],
    num_head_channels=64,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=1024,
    use_checkpoint=False,
    legacy=False,
    camera_dim=16,
)

# BLIP's med_config.json as ImageReward ships it (one copy, in the fixture script).
from make_image_reward_fixtures import REAL_MED_CONFIG as IMAGE_REWARD_MED_CONFIG  # noqa: E402

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def write_json(path: Path, value, sort_keys=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")


def folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):  # does not follow symlinked folders
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def report(name: str, params: int, path: Path):
    size = path.stat().st_size if path.is_file() else folder_bytes(path)
    print(f"  {name:<34} {params:>13,} parameters  {size:>15,} bytes  ({size / 2**30:.2f} GiB)"
          f"  -> {path}", flush=True)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def symlink(target_rel: str, link: Path):
    if link.is_symlink() or link.exists():
        if link.is_symlink():
            link.unlink()
        else:
            return
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target_rel, link)


# ---------------------------------------------------------------------------------------------
# CLIP BPE tokenizer (OpenAI CLIP's simple_tokenizer.py encoder, HF vocab.json/merges.txt)
# ---------------------------------------------------------------------------------------------


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer(folder: Path):
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merge_pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for pair in merge_pairs:
        vocab.append("".join(pair))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    encoder = dict(zip(vocab, range(len(vocab))))
    assert len(encoder) == 49408, len(encoder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(p) for p in merge_pairs) + "\n")
    write_json(folder / "tokenizer_config.json", SD21_TOKENIZER_CONFIG)
    write_json(folder / "special_tokens_map.json", SD21_SPECIAL_TOKENS_MAP)

    # Cross-check: transformers reads the folder as SD 2.1's tokenizer, and its ids equal
    # open_clip's own tokenizer (which SD 2.x / MVDream trained with) for the prompt.
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder))
    prompt = "a DSLR photo of a blue cone on top of an orange cylinder, 4k"
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    ref = open_clip.tokenize([prompt])[0].tolist()
    n = ref.index(49407) + 1
    assert ids[:n] == ref[:n], (ids[:n], ref[:n])
    assert tok.pad_token == "!" and tok.pad_token_id == 0, (tok.pad_token, tok.pad_token_id)
    assert ids[n:] == [0] * (77 - n)
    print(f"  tokenizer: {len(encoder)} tokens, {len(merge_pairs)} merges; "
          f"ids match open_clip.tokenize ({n} tokens), pad '!' = 0", flush=True)
    # A known upstream quirk, printed for the record: transformers treats the pad token "!" as
    # a special token, so a literal "!" in a prompt becomes id 0 ("!" without "</w>") where
    # open_clip (what SD 2.x / MVDream trained with) gives 256 ("!</w>").
    bang = "wow!"
    print(f"  note: {bang!r} -> transformers {tok(bang).input_ids}, open_clip "
          f"{open_clip.tokenize([bang])[0][:4].tolist()}", flush=True)


# ---------------------------------------------------------------------------------------------
# sd21-base
# ---------------------------------------------------------------------------------------------


def strip_private(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def write_sd21(out: Path, seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    root = out / "sd21-base"
    print(f"sd21-base -> {root}", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "model_index.json", SD21_MODEL_INDEX, sort_keys=True)
    write_json(root / "scheduler" / "scheduler_config.json", SD21_SCHEDULER)
    write_json(root / "feature_extractor" / "preprocessor_config.json", SD21_FEATURE_EXTRACTOR)
    write_clip_tokenizer(root / "tokenizer")

    # text encoder
    torch.manual_seed(seed + 1)
    config = CLIPTextConfig(**{k: v for k, v in SD21_TEXT_ENCODER.items()
                               if k not in ("_name_or_path", "architectures", "torch_dtype",
                                            "transformers_version", "model_type")})
    model = CLIPTextModel(config).eval()
    n = count(model)
    folder = root / "text_encoder"
    model.save_pretrained(folder, safe_serialization=True)
    del model
    gc.collect()
    # As transformers 4.25 wrote it: position_ids was a persistent buffer then.
    weights = folder / "model.safetensors"
    state = load_file(weights)
    state.setdefault("text_model.embeddings.position_ids",
                     torch.arange(77, dtype=torch.int64).unsqueeze(0))
    save_file(state, weights, metadata={"format": "pt"})
    del state
    gc.collect()
    write_json(folder / "config.json", SD21_TEXT_ENCODER)
    report("sd21-base/text_encoder", n, folder)

    # unet
    torch.manual_seed(seed + 2)
    model = UNet2DConditionModel(**strip_private(SD21_UNET)).eval()
    n = count(model)
    folder = root / "unet"
    model.save_pretrained(folder, safe_serialization=True)
    del model
    gc.collect()
    write_json(folder / "config.json", SD21_UNET)
    report("sd21-base/unet", n, folder)

    # vae
    torch.manual_seed(seed + 3)
    model = AutoencoderKL(**strip_private(SD21_VAE)).eval()
    assert model.config.scaling_factor == 0.18215
    n = count(model)
    folder = root / "vae"
    model.save_pretrained(folder, safe_serialization=True)
    del model
    gc.collect()
    write_json(folder / "config.json", SD21_VAE)
    report("sd21-base/vae", n, folder)

    # Cross-check: diffusers reads the published configs back into the same models.
    for sub, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        with torch.device("meta"):
            again = cls.from_config(cls.load_config(str(root / sub)))
        print(f"    diffusers reads {sub}/config.json: {count(again):,} parameters", flush=True)
    report("sd21-base (all)", 0, root)


# ---------------------------------------------------------------------------------------------
# MVDream
# ---------------------------------------------------------------------------------------------


def import_mvdream(mvdream_root: str):
    import make_mvdream_fixtures as mf

    ldm_util, camera_utils = mf.import_mvdream(mvdream_root)
    return mf, ldm_util


def mvdream_model_config(mf, with_cond_stage: bool):
    """MVDream's sd-v2-base.yaml with the full-size UNet and first stage; the OpenCLIP
    embedder (which would download weights) replaced by Identity: the caller attaches a random
    OpenCLIP text tower where one is wanted."""
    import copy

    config = copy.deepcopy(mf.MODEL_CONFIG)
    params = config["model"]["params"]
    params["unet_config"]["params"] = dict(MVDREAM_UNET_PARAMS)
    params["first_stage_config"]["params"]["ddconfig"] = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    params["cond_stage_config"] = {"target": "torch.nn.Identity"}
    del with_cond_stage
    return config


def randomise_zero_weights(module, gen):
    """MVDream zero-initialises its output convs (`zero_module`: out.2, every ResBlock's
    out_layers.3, every transformer's proj_out): with them at zero the random UNet would output
    exactly 0. Give those weights N(0, 1/fan_in) instead; biases stay."""
    import math

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))


def build_interface(mf, ldm_util, seed: int, with_text: bool):
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    config = OmegaConf.create(mvdream_model_config(mf, with_text))
    interface = ldm_util.instantiate_from_config(config.model).eval()
    randomise_zero_weights(interface.model.diffusion_model, torch.Generator().manual_seed(seed))
    if with_text:
        interface.cond_stage_model = openclip_text_embedder(seed + 100)
    return interface, config


class _OpenCLIPText(torch.nn.Module):
    """open_clip's CLIP with its `visual` deleted, as FrozenOpenCLIPEmbedder keeps it: the
    text tower's attributes under CLIP's own names, and logit_scale."""

    def __init__(self):
        super().__init__()
        import numpy as np
        from open_clip.model import CLIPTextCfg, _build_text_tower

        # ViT-H-14.json: embed_dim 1024; text: context 77, vocab 49408, width 1024, 16 heads,
        # 24 layers.
        text = _build_text_tower(1024, CLIPTextCfg(context_length=77, vocab_size=49408,
                                                   width=1024, heads=16, layers=24))
        self.positional_embedding = text.positional_embedding
        self.text_projection = text.text_projection
        self.logit_scale = torch.nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.transformer = text.transformer
        self.token_embedding = text.token_embedding
        self.ln_final = text.ln_final
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        assert isinstance(self.text_projection, torch.nn.Parameter)


class _Embedder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = _OpenCLIPText()


def openclip_text_embedder(seed: int):
    torch.manual_seed(seed)
    return _Embedder().eval()


def write_mvdream(out: Path, seed: int, mvdream_root: str):
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    mf, ldm_util = import_mvdream(mvdream_root)
    root = out / "mvdream"
    print(f"mvdream (diffusers-style) -> {root}", flush=True)
    ensure_sd21_shared(out, seed)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "model_index.json", MVDREAM_MODEL_INDEX, sort_keys=True)
    for sub in ("text_encoder", "tokenizer", "vae"):
        symlink(f"../sd21-base/{sub}", root / sub)

    # The converter's scheduler: DDIM on MVDream's schedule (linear_start/end of the yaml with
    # SD's scaled_linear betas), epsilon.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    scheduler.save_pretrained(root / "scheduler")

    interface, original_config = build_interface(mf, ldm_util, seed + 10, with_text=False)
    unet = interface.model.diffusion_model
    n = count(unet)
    prefix = mf.UNET_PREFIX
    state = {k[len(prefix):]: v.detach().contiguous()
             for k, v in interface.state_dict().items() if k.startswith(prefix)}
    folder = root / "unet"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        mf.diffusers_config_json(mf.create_unet_config(original_config)))
    save_file(state, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    del state, unet, interface
    gc.collect()
    report("mvdream/unet", n, folder)
    report("mvdream (own files)", 0, root)


def write_mvdream_original(out: Path, seed: int, mvdream_root: str):
    mf, ldm_util = import_mvdream(mvdream_root)
    root = out / "mvdream-original"
    print(f"mvdream-original -> {root}", flush=True)
    ensure_sd21_shared(out, seed)
    root.mkdir(parents=True, exist_ok=True)
    symlink("../sd21-base/tokenizer", root / "tokenizer")

    # The same seed as the diffusers-style folder's UNet: both UNets hold the same weights.
    interface, _ = build_interface(mf, ldm_util, seed + 10, with_text=True)
    parts = {
        "model.diffusion_model": count(interface.model.diffusion_model),
        "first_stage_model": count(interface.first_stage_model),
        "cond_stage_model": count(interface.cond_stage_model),
    }
    state = interface.state_dict()
    buffers = {name for name, _ in interface.named_buffers() if name in state}
    assert buffers == set(mf.SCHEDULE_BUFFERS), sorted(buffers)
    out_state = collections.OrderedDict(
        (k, v.detach().float().contiguous() if v.is_floating_point() else v.detach())
        for k, v in state.items())
    out_state._metadata = state._metadata
    path = root / "sd-v2.1-base-4view.pt"
    torch.save(out_state, path)
    n = sum(parts.values())
    del out_state, state
    gc.collect()
    for k, v in parts.items():
        print(f"    {k}: {v:,} parameters", flush=True)
    report("mvdream-original/sd-v2.1-base-4view.pt", n, path)

    # Read back as build_model does (strict).
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    interface.load_state_dict(loaded, strict=True)
    print(f"    loads strict into LatentDiffusionInterface ({len(loaded)} keys)", flush=True)
    del loaded, interface
    gc.collect()


def ensure_sd21_shared(out: Path, seed: int):
    """The parts MVDream's folders symlink into sd21-base (written when missing)."""
    if not (out / "sd21-base" / "text_encoder" / "model.safetensors").is_file() \
            or not (out / "sd21-base" / "vae" / "diffusion_pytorch_model.safetensors").is_file():
        print("  (sd21-base is not there yet: writing it first, MVDream's folders link to its "
              "text encoder, tokenizer and VAE)", flush=True)
        write_sd21(out, seed)


# ---------------------------------------------------------------------------------------------
# ImageReward
# ---------------------------------------------------------------------------------------------

COMMON_WORDS = """
a an the of on in at to with and or for from by under over top bottom left right front back
blue red green yellow orange purple pink white black brown gray grey gold silver cone cube
sphere cylinder torus pyramid ball box car house tree dog cat bird fish penguin horse apple
banana chair table lamp cup bag hat shoe robot castle tower bridge boat ship plane rocket
dslr photo photograph picture image render rendering high quality detailed realistic 4k 8k
hd art style painting drawing sculpture model 3d statue toy wooden metal glass stone plastic
small large big tiny huge cute old new beautiful snow water fire sky grass flower flowers
sitting standing running flying is are was were it its this that these those man woman child
person people face head eye eyes hand hands body light dark shadow background view side
""".split()


def write_bert_vocab(path: Path):
    """A SYNTHETIC bert-base-uncased-shaped vocab.txt (30522 lines): the special tokens at
    bert's ids, then characters, common words, wordpieces and made-up filler words."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)]
    vocab += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 999 - len(vocab))]
    assert len(vocab) == 999 and vocab[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    seen = set(vocab)

    def add(token):
        if token not in seen:
            seen.add(token)
            vocab.append(token)

    for c in chars:
        add(c)
    for w in COMMON_WORDS:
        add(w)
    for c in chars:
        if c.isalnum():
            add("##" + c)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for a in letters:
        for b in letters:
            add("##" + a + b)
    for a in letters:
        for b in letters:
            add(a + b)
    i = 0
    while len(vocab) < 30522:
        add(f"synth{i:05d}")
        i += 1
    assert len(vocab) == 30522
    path.write_text("\n".join(vocab) + "\n")
    return len(vocab)


def write_image_reward(out: Path, seed: int):
    import make_image_reward_fixtures as irf
    from transformers import BertTokenizer

    root = out / "image-reward"
    print(f"image-reward -> {root}", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    n_vocab = write_bert_vocab(root / "vocab.txt")
    write_json(root / "med_config.json", IMAGE_REWARD_MED_CONFIG)
    write_json(root / "tokenizer_config.json", {
        "cls_token": "[CLS]",
        "do_lower_case": True,
        "mask_token": "[MASK]",
        "model_max_length": 512,
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "tokenizer_class": "BertTokenizer",
        "unk_token": "[UNK]",
    })
    image_reward, blip_pretrain, vit = irf.import_reference(None)
    # (transformers 5's BertTokenizer(vocab_file=...) ignores the file; from_pretrained reads it)
    tok = BertTokenizer.from_pretrained(str(root))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.convert_tokens_to_ids("[ENC]")
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [n_vocab, n_vocab + 1]
    print(f"  vocab.txt: {n_vocab} lines (synthetic); [DEC], [ENC] -> {n_vocab}, {n_vocab + 1}; "
          f"'a blue cone on top of an orange cylinder' -> "
          f"{tok('a blue cone on top of an orange cylinder').input_ids}", flush=True)

    torch.manual_seed(seed + 20)
    model = irf.build(image_reward, blip_pretrain, vit, root / "med_config.json", tok, None)
    n = count(model)
    state = model.state_dict()
    assert "blip.text_encoder.embeddings.position_ids" in state
    path = root / "ImageReward.pt"
    torch.save(state, path)
    print(f"    {len(state)} state dict keys; visual_encoder "
          f"{count(model.blip.visual_encoder):,}, text_encoder "
          f"{count(model.blip.text_encoder):,}, mlp {count(model.mlp):,}", flush=True)
    report("image-reward/ImageReward.pt", n, path)
    del state, model
    gc.collect()
    report("image-reward (all)", 0, root)


# ---------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/rehearsal", type=Path)
    parser.add_argument("--only", choices=["sd21", "mvdream", "mvdream-original", "image-reward"],
                        action="append",
                        help="write only this (repeatable); default: all four")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mvdream", default="/tmp/mvdream",
                        help="MVDream's reference code (the folder holding mvdream/)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_grad_enabled(False)
    which = args.only or ["sd21", "mvdream", "mvdream-original", "image-reward"]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for name in which:
        t = time.time()
        if name == "sd21":
            write_sd21(args.out, args.seed)
        elif name == "mvdream":
            write_mvdream(args.out, args.seed, args.mvdream)
        elif name == "mvdream-original":
            write_mvdream_original(args.out, args.seed, args.mvdream)
        elif name == "image-reward":
            write_image_reward(args.out, args.seed)
        gc.collect()
        print(f"{name}: {time.time() - t:.0f}s", flush=True)
    print(f"all done in {time.time() - start:.0f}s; {folder_bytes(args.out) / 2**30:.2f} GiB "
          f"under {args.out}", flush=True)


if __name__ == "__main__":
    main()
