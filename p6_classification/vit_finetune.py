"""Fine-tune a pretrained timm ViT on CIFAR-10: the last N transformer blocks, the final
norm and a new 10-class head train; patch embedding, position embedding and the earlier
blocks stay frozen. CIFAR images are upsampled to 224 px on the device.

    python -m p6_classification.vit_finetune --data data/cifar10 --download \\
        --weights weights/vit_b16/model.safetensors --trainable-blocks 4
    torchrun --nproc_per_node=N p6_classification/vit_finetune.py ...

This is train.py with `--model vit` (its ViT defaults: 10 epochs, SGD lr 0.01, no weight
decay, flip+crop); every train.py option applies. The weights are timm's
vit_base_patch16_224.augreg2_in21k_ft_in1k `model.safetensors` (a local file; `--weights hub`
fetches it when online).
"""

from __future__ import annotations

import sys

from hw2_utils import run_cli
from p6_classification import train


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
    return train.main(["--model", "vit", *argv])


if __name__ == "__main__":
    run_cli(main)
