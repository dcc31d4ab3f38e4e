#!/usr/bin/env python3
"""Config-only model folders at full size, for `rewardsds bench --random-weights`: every config
file of the real layouts, no weight file. The engine builds each model from its config and
keeps its random initial weights (engine/src/weights/random_init.rs), so a machine without the
real weights (a borrowed GPU, no network) times the real architectures.

    python3 tools/gpu/write_model_configs.py --out /tmp/models           # full size
    python3 tools/gpu/write_model_configs.py --out /tmp/models --tiny    # the test fixtures'

Writes sd21-base/, mvdream/, image-reward/ and taesd/ under --out. Full size: the published
configs as tools/rehearsal/make_random_weights.py writes them (one copy of each value, imported
from there), MVDream's UNet config as ashawkey's converter writes it, TAESD's as diffusers'
AutoencoderTiny defaults (madebyollin/taesd). --tiny: the configs of the tiny test fixtures
under engine/tests/fixtures (a plumbing check in seconds on a CPU).

The tokenizers are the tiny test fixtures' (engine/tests/fixtures): their token ids are a
subset of the real vocabularies' range, which is all a timing needs (the real CLIP BPE and
bert-base-uncased vocabularies cannot be downloaded here). Needs only the standard library and
torch (make_random_weights.py imports it).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIXTURES = ROOT / "engine" / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "tools" / "rehearsal"))
sys.path.insert(0, str(ROOT / "tools" / "fixtures"))

# diffusers' AutoencoderTiny defaults: madebyollin/taesd's architecture (SD 1.x/2.x latents).
TAESD = {
    "_class_name": "AutoencoderTiny",
    "act_fn": "relu",
    "decoder_block_out_channels": [64, 64, 64, 64],
    "encoder_block_out_channels": [64, 64, 64, 64],
    "force_upcast": False,
    "in_channels": 3,
    "latent_channels": 4,
    "latent_magnitude": 3,
    "latent_shift": 0.5,
    "num_decoder_blocks": [3, 3, 3, 1],
    "num_encoder_blocks": [1, 3, 3, 3],
    "out_channels": 3,
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
    "upsample_fn": "nearest",
    "upsampling_scaling_factor": 2,
}

# Keys ashawkey's converter pops from MVDream's unet_config.params (see
# tools/fixtures/make_mvdream_fixtures.py, create_unet_config).
MVDREAM_POPPED = ("legacy", "use_linear_in_transformer", "use_spatial_transformer")


def write_json(path: Path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def copy(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def clip_tokenizer(folder: Path):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        copy(FIXTURES / "clip" / "sd2-text" / "tokenizer" / name, folder / "tokenizer" / name)


def full(out: Path):
    import make_random_weights as rw

    sd = out / "sd21-base"
    write_json(sd / "model_index.json", rw.SD21_MODEL_INDEX)
    write_json(sd / "scheduler" / "scheduler_config.json", rw.SD21_SCHEDULER)
    write_json(sd / "text_encoder" / "config.json", rw.SD21_TEXT_ENCODER)
    write_json(sd / "unet" / "config.json", rw.SD21_UNET)
    write_json(sd / "vae" / "config.json", rw.SD21_VAE)
    clip_tokenizer(sd)

    mv = out / "mvdream"
    write_json(mv / "model_index.json", rw.MVDREAM_MODEL_INDEX)
    unet = {k: v for k, v in rw.MVDREAM_UNET_PARAMS.items() if k not in MVDREAM_POPPED}
    write_json(mv / "unet" / "config.json",
               {"_class_name": "MultiViewUNetModel", "_diffusers_version": "0.25.0", **unet})
    copy(FIXTURES / "scheduler_ddim" / "scheduler_config.json",
         mv / "scheduler" / "scheduler_config.json")
    write_json(mv / "text_encoder" / "config.json", rw.SD21_TEXT_ENCODER)
    write_json(mv / "vae" / "config.json", rw.SD21_VAE)
    clip_tokenizer(mv)

    ir = out / "image-reward"
    write_json(ir / "med_config.json", rw.IMAGE_REWARD_MED_CONFIG)
    for name in ("vocab.txt", "tokenizer_config.json"):
        copy(FIXTURES / "image_reward_tiny" / name, ir / name)

    write_json(out / "taesd" / "config.json", TAESD)


def tiny(out: Path):
    def latent_pipeline(folder: Path, unet_config: Path):
        clip_tokenizer(folder)
        copy(FIXTURES / "clip" / "sd2-text" / "text_encoder" / "config.json",
             folder / "text_encoder" / "config.json")
        copy(unet_config, folder / "unet" / "config.json")
        copy(FIXTURES / "vae_tiny" / "config.json", folder / "vae" / "config.json")
        copy(FIXTURES / "scheduler_ddim" / "scheduler_config.json",
             folder / "scheduler" / "scheduler_config.json")

    # The UNets whose context width is the tiny text encoder's (32).
    latent_pipeline(out / "sd21-base", FIXTURES / "unet_sd15_tiny" / "config.json")
    latent_pipeline(out / "mvdream", FIXTURES / "mvdream_tiny" / "unet" / "config.json")
    for name in ("med_config.json", "vision_config.json", "vocab.txt", "tokenizer_config.json"):
        copy(FIXTURES / "image_reward_tiny" / name, out / "image-reward" / name)
    copy(FIXTURES / "taesd_tiny" / "config.json", out / "taesd" / "config.json")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tiny", action="store_true", help="the test fixtures' configs")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    (tiny if args.tiny else full)(args.out)
    files = sorted(p.relative_to(args.out) for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(files)} config files, no weights "
          f"({'tiny fixtures' if args.tiny else 'full size'})")


if __name__ == "__main__":
    main()
