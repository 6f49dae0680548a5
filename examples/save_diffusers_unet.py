"""Write a diffusers ``save_pretrained`` folder to try "bring your own model" without a download:

    python examples/save_diffusers_unet.py out/my_unet [--size 28] [--classes 0]

A freshly initialised ``UNet2DModel`` (1 channel; unconditional, or class-conditional with
``num_class_embeds = K + 1``, the last row null) and the ``DDPMScheduler`` config it would be trained
with, as ``unet/`` and ``scheduler/``. It stands in for your own pretrained folder: its samples are
noise until it is trained, but every diffguide command runs on it exactly as on a real one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--classes", type=int, default=0, help="K > 0: class-conditional with K + 1 embeddings")
    a = ap.parse_args()
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=a.size, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       num_class_embeds=a.classes + 1 if a.classes else None)
    unet.save_pretrained(a.folder / "unet")  # safetensors
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon").save_pretrained(
        a.folder / "scheduler")
    print(f"{a.folder}/unet (UNet2DModel, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters) "
          f"and {a.folder}/scheduler")


if __name__ == "__main__":
    main()
