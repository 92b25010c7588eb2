"""The networks: ResNet-18 (CIFAR 3x3 stem or torchvision's ImageNet stem) and a timm ViT
with its last N blocks and a new head trainable.

Our ResNet-18 keeps torchvision's parameter names, and with the ImageNet stem at width 64 it
*is* torchvision's `resnet18` (tests load one into the other and compare outputs). `width`
scales every stage, so the CPU study can run a narrower copy of the same architecture.
A model is rebuilt from its `arch` dict, which every checkpoint stores.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hw2_utils import CLIError

VIT_NAME = "vit_base_patch16_224"
VIT_WEIGHTS_HINT = (
    "download model.safetensors of timm/vit_base_patch16_224.augreg2_in21k_ft_in1k, e.g. "
    "`huggingface-cli download timm/vit_base_patch16_224.augreg2_in21k_ft_in1k model.safetensors "
    "--local-dir weights/vit_b16`, or pass --weights hub when online"
)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """stem "cifar": 3x3 conv stride 1, no max-pool (32x32 -> 4x4 maps after layer4);
    stem "imagenet": 7x7 conv stride 2 + max-pool, as torchvision (32x32 -> 1x1)."""

    def __init__(self, num_classes: int = 10, stem: str = "cifar", width: int = 64):
        super().__init__()
        if stem == "cifar":
            self.conv1, self.maxpool = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.Identity()
        elif stem == "imagenet":
            self.conv1, self.maxpool = (
                nn.Conv2d(3, width, 7, 2, 3, bias=False),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            raise ValueError(f"unknown stem {stem!r}: use cifar or imagenet")
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        widths = [width, 2 * width, 4 * width, 8 * width]
        cin = width
        for index, cout in enumerate(widths):
            stride = 1 if index == 0 else 2
            setattr(
                self,
                f"layer{index + 1}",
                nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)),
            )
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv feature maps (what CAM weights), before global average pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


class Resized(nn.Module):
    """Upsample 32x32 CIFAR batches to the ViT's input size on the device (far cheaper than
    resizing every image in the data loader)."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)


def freeze_for_finetune(vit: nn.Module, trainable_blocks: int) -> None:
    """Train only the last `trainable_blocks` transformer blocks, the final norm and the head."""
    if not 0 <= trainable_blocks <= len(vit.blocks):
        raise CLIError(
            f"--trainable-blocks must be in 0..{len(vit.blocks)}, got {trainable_blocks}"
        )
    vit.requires_grad_(False)
    trainable = [vit.head, vit.norm, vit.fc_norm]
    if trainable_blocks:
        trainable += list(vit.blocks[-trainable_blocks:])
    for module in trainable:
        module.requires_grad_(True)


def load_vit_weights(vit: nn.Module, path: str | Path) -> None:
    """Pretrained weights from a local file (.safetensors, .pth/.bin state dict, or Google's
    .npz); the classifier head is left as initialised when its class count differs."""
    import timm.models.vision_transformer as tvit

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"ViT weights not found: {path} ({VIT_WEIGHTS_HINT})")
    if path.suffix == ".npz":
        vit.load_pretrained(str(path))
        return
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # resamples position embeddings to this image size
    state = tvit.checkpoint_filter_fn(state, vit)
    own = vit.state_dict()
    misfit = [
        k
        for k, v in state.items()
        if k not in own or (v.shape != own[k].shape and not k.startswith("head."))
    ]
    missing = [k for k in own if k not in state and not k.startswith("head.")]
    if misfit or missing:
        raise CLIError(
            f"{path} does not fit {type(vit).__name__}: missing {missing[:3]}, unexpected or "
            f"mis-shaped {misfit[:3]}"
        )
    vit.load_state_dict({k: v for k, v in state.items() if v.shape == own[k].shape}, strict=False)


def build_model(arch: dict, num_classes: int = 10, weights: str | None = None) -> nn.Module:
    """Rebuild a network from its `arch` dict. `weights` (ViT only): a local file, "hub", or
    None for random initialisation (tests, or loading a fine-tuned checkpoint afterwards)."""
    if arch["model"] == "resnet18":
        return ResNet18(num_classes, arch.get("stem", "cifar"), arch.get("width", 64))
    if arch["model"] == "vit":
        import timm

        vit = timm.create_model(
            arch["name"],
            pretrained=weights == "hub",
            num_classes=num_classes,
            img_size=arch["img_size"],
            **arch.get("timm_kwargs", {}),
        )
        if weights and weights != "hub":
            load_vit_weights(vit, weights)
        freeze_for_finetune(vit, arch["trainable_blocks"])
        return Resized(vit, arch["img_size"])
    raise CLIError(f"unknown model {arch['model']!r}: use resnet18 or vit")


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean/std the pretrained ViT expects, or None for our ResNet (CIFAR statistics)."""
    if isinstance(model, Resized):
        cfg = model.net.pretrained_cfg
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return None
