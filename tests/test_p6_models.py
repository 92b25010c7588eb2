"""P6 networks and saliency: our ResNet-18 is torchvision's, CAM is the FC-weighted feature
sum and agrees with the grad-cam library's Grad-CAM on a GAP+FC network, the ViT loads
local weights and trains only its last blocks and head, and ViT Grad-CAM maps tokens to
the right patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from conftest import require_shared
from hw2_utils import CLIError
from p6_classification.cam import class_activation_map, grad_cam, heatmap, vit_tokens_to_grid
from p6_classification.data import CIFAR_MEAN, CIFAR_STD, load_cifar
from p6_classification.models import ResNet18, build_model, freeze_for_finetune, load_vit_weights

TINY_VIT = {
    "model": "vit",
    "name": "vit_tiny_patch16_224",
    "img_size": 32,
    "trainable_blocks": 1,
    "timm_kwargs": {"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2},
}


@pytest.fixture(scope="module")
def images():
    cifar = load_cifar(require_shared("cifar10", "cifar10_slice.npz"))
    x = cifar.test_images[:4].float() / 255
    return (x - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)


def test_imagenet_stem_is_torchvision_resnet18():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    ours = ResNet18(10, stem="imagenet").eval()
    ours.load_state_dict(reference.state_dict())  # strict: identical names and shapes
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), reference(x))
    cifar = ResNet18(10, stem="cifar", width=8)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert cifar.features(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 4, 4)  # no max-pool: 32 -> 4


def test_cam_is_the_fc_weighted_feature_sum(images):
    torch.manual_seed(0)
    model = ResNet18(10, width=8).eval()
    classes = torch.tensor([3, 0, 9, 5])
    feats = {}
    model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("a", o.detach()))
    with torch.no_grad():
        logits = model(images)
        cam = class_activation_map(model, images, classes)
    a, w = feats["a"].numpy(), model.fc.weight.detach().numpy()
    expected = np.stack(
        [np.tensordot(w[c], a[n], axes=(0, 0)) for n, c in enumerate(classes.tolist())]
    )
    np.testing.assert_allclose(cam.numpy(), expected, rtol=1e-5, atol=1e-5)
    # GAP then FC: the CAM's spatial mean plus the bias is the class logit.
    torch.testing.assert_close(
        cam.mean(dim=(1, 2)) + model.fc.bias[classes], logits[torch.arange(4), classes]
    )


def test_cam_matches_grad_cam_library_on_gap_fc_network(images):
    torch.manual_seed(1)
    model = ResNet18(10, width=8).eval()
    with torch.no_grad():
        classes = model(images).argmax(1)
        ours = heatmap(class_activation_map(model, images, classes), (32, 32)).numpy()
    library = grad_cam(model, images, classes)
    assert library.shape == ours.shape == (4, 32, 32)
    assert all(m.max() > 0.99 for m in ours)  # non-trivial maps
    np.testing.assert_allclose(ours, library, atol=1e-4)


def test_vit_loads_local_weights_and_keeps_a_new_head(tmp_path):
    torch.manual_seed(0)
    source = build_model({**TINY_VIT, "trainable_blocks": 3}, num_classes=1000).net
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors"
    )
    model = build_model(TINY_VIT, num_classes=10, weights=str(tmp_path / "model.safetensors")).net
    for name, value in model.state_dict().items():
        if name.startswith("head."):
            assert value.shape[0] == 10
        else:
            assert torch.equal(value, source.state_dict()[name]), name
    with pytest.raises(CLIError, match="ViT weights not found: .*huggingface-cli download"):
        load_vit_weights(model, tmp_path / "missing.safetensors")
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CLIError, match="does not fit"):
        load_vit_weights(model, tmp_path / "foreign.safetensors")


def test_frozen_vit_blocks_do_not_change_after_an_optimizer_step(images):
    torch.manual_seed(0)
    model = build_model(TINY_VIT, num_classes=10)
    vit = model.net
    before = {n: p.detach().clone() for n, p in vit.named_parameters()}
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable == {n for n in before if n.startswith(("blocks.2.", "norm.", "head."))}
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9, weight_decay=5e-4
    )
    for _ in range(2):
        loss = F.cross_entropy(model(images), torch.tensor([1, 2, 3, 4]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in vit.named_parameters():
        assert torch.equal(p, before[name]) != (name in trainable), name
    freeze_for_finetune(vit, 0)
    still_trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert still_trainable == {n for n in before if n.startswith(("norm.", "head."))}


def test_vit_token_grid_layout():
    vit = build_model(TINY_VIT).net  # 32 px / patch 8 -> a 4x4 grid after 1 class token
    tokens = torch.arange(17, dtype=torch.float32).view(1, 17, 1).expand(2, 17, 5)
    grid = vit_tokens_to_grid(vit)(tokens)
    assert grid.shape == (2, 5, 4, 4)
    # row-major patches
    assert torch.equal(grid[0, 0], torch.arange(1, 17, dtype=torch.float32).view(4, 4))


def test_vit_grad_cam_matches_a_manual_computation(images):
    torch.manual_seed(2)
    model = build_model(TINY_VIT).eval()
    classes = torch.tensor([0, 1, 2, 3])
    library = grad_cam(model, images, classes)
    assert all(not p.requires_grad for p in model.net.blocks[0].parameters())  # flags restored
    saved = {}

    def keep(module, inputs, output):
        output.retain_grad()
        saved["a"] = output

    model.requires_grad_(True)
    model.net.blocks[-1].norm1.register_forward_hook(keep)
    model(images)[torch.arange(4), classes].sum().backward()
    a, g = (vit_tokens_to_grid(model.net)(t) for t in (saved["a"], saved["a"].grad))
    manual = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)
    np.testing.assert_allclose(heatmap(manual.detach(), (32, 32)).numpy(), library, atol=1e-4)
