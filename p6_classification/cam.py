"""Class activation maps for a trained model on the first N CIFAR-10 test images.

    python p6_classification/cam.py --checkpoint runs/p6/resnet18/final.pt --data DATA --out outputs/p6/cam
    python p6_classification/cam.py --checkpoint runs/p6/vit/final.pt --data DATA --out outputs/p6/cam

ResNet-18: CAM (Zhou et al. 2016, ours: the predicted class's FC weights times the last conv
feature maps, which global average pooling feeds to the FC layer) beside Grad-CAM (the
grad-cam library, on layer4). ViT: Grad-CAM on the last block's norm1, its patch tokens
reshaped to the patch grid. Writes OUT/cam_<model>.png (one row per image, titled with the
predicted and true class).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hw2_utils import CLIError, resolve_device, run_cli, save_figure
from p6_classification.augment import build_preset
from p6_classification.data import load_cifar
from p6_classification.infer import load_checkpoint
from p6_classification.models import Resized, ResNet18


def class_activation_map(model: ResNet18, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N,h,w): sum_k w[c,k] * A_k for each image's class c, at the feature map's resolution."""
    features = model.features(x)
    return torch.einsum("nk,nkhw->nhw", model.fc.weight[classes], features)


def heatmap(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU, bilinear upsampling to `size`, then each map scaled to [0, 1] (what grad-cam does)."""
    maps = F.interpolate(maps.clamp(min=0)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    return (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low + 1e-7)


def vit_tokens_to_grid(vit: torch.nn.Module):
    """grad-cam's reshape_transform for a timm ViT: drop the class/register tokens and lay the
    patch tokens (B, h*w, C) out as feature maps (B, C, h, w)."""
    h, w = vit.patch_embed.grid_size

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, vit.num_prefix_tokens:]
        return patches.reshape(len(tokens), h, w, -1).permute(0, 3, 1, 2)
    return reshape


def grad_cam(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """(N,H,W) in [0, 1] from the grad-cam library, on layer4 (ResNet) or the last block's norm1 (ViT)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if isinstance(model, Resized):
        layer, reshape = model.net.blocks[-1].norm1, vit_tokens_to_grid(model.net)
    else:
        layer, reshape = model.layer4[-1], None
    # Frozen ViT blocks would cut the backward pass short of the target layer.
    saved = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)
    try:
        with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        for p, flag in zip(model.parameters(), saved):
            p.requires_grad_(flag)


def overlay_figure(images: torch.Tensor, maps: dict[str, np.ndarray], titles: list[str], path: Path) -> None:
    """One row per image: the image, then each map over it (jet, half transparent)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + len(maps)
    fig, axes = plt.subplots(len(images), columns, figsize=(2.2 * columns, 2.2 * len(images)), squeeze=False)
    for row, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(titles[row], fontsize=8)
        for col, (name, heat) in enumerate(maps.items(), start=1):
            axes[row, col].imshow(image)
            axes[row, col].imshow(heat[row], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if row == 0:
                axes[row, col].set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="final.pt of train.py or vit_finetune.py")
    p.add_argument("--data", default="data/cifar10", help="CIFAR-10 root or the .npz slice (its test images are used)")
    p.add_argument("--n", type=int, default=8, help="number of test images (the first N)")
    p.add_argument("--out", default="outputs/p6/cam")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.n < 1:
        raise CLIError("--n must be at least 1")
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    cifar = load_cifar(args.data)
    images, labels = cifar.test_images[:args.n], cifar.test_labels[:args.n]
    x = build_preset(meta["preset"], meta["mean"], meta["std"], len(meta["classes"])).eval(images).to(device)
    with torch.no_grad():
        predicted = model(x).argmax(1).cpu()
    maps = {}
    if isinstance(model, ResNet18):
        with torch.no_grad():
            maps["CAM (ours)"] = heatmap(class_activation_map(model, x, predicted), x.shape[-2:]).cpu().numpy()
    maps["Grad-CAM"] = grad_cam(model, x, predicted)
    names = meta["classes"]
    titles = [f"pred {names[p]} / true {names[t]}" for p, t in zip(predicted.tolist(), labels.tolist())]
    path = Path(args.out) / f"cam_{meta['arch']['model']}.png"
    overlay_figure(images, maps, titles, path)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
