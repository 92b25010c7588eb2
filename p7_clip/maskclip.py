"""(d) MaskCLIP (Zhou, Loy & Dai, ECCV 2022), written here on top of open_clip: dense
zero-shot segmentation from a frozen CLIP image encoder.

    python -m p7_clip.maskclip --clip ViT-B-16=weights/ViT-B-16-openai --data IMG_DIR \\
        --classes pascal-context-59 --masks MASK_DIR --reduce-zero-label --out outputs/p7/maskclip

CLIP's image embedding comes from one token that attends to all the others; the value
vectors of the last attention block, taken per patch and without the query-key mixing, land
in the same space. So per patch (ViT), as the official code's backbone (chongzhou96/MaskCLIP,
mmseg/models/backbones/vit.py) computes it: the last block with each token attending only to
itself, v = x + out_proj(value(LN_1 x)), v = v + MLP(LN_2 v), then ln_post and proj give a
dense (D, h, w) map. The class-name text embeddings act as the weights of a 1x1 convolution
over the unit features (cosines), and the scores are upsampled bilinearly to the image.
(ResNets: attnpool's v_proj then c_proj on every position of the last stage, without the
positional embedding.) The paper's two refinements, as the official head's refine_output
(mmseg/models/decode_heads/maskclip_head.py) runs them, both on softmax(100 x cosine):
--denoise T first removes the classes whose probability stays below T at every patch (a class
that wins nowhere with confidence is probably absent); --key-smoothing T then replaces the
probabilities of every patch whose top class is below T by a key-similarity-weighted sum of
all patches' probabilities (the official configs use T = 1.0: every patch).

--classes is a comma list, a text file with one name per line, or `pascal-context-59`.
--masks holds one PNG label map per image (same stem): class indices, 255 = ignore;
--reduce-zero-label maps 0 to ignore and k to k-1 (mmseg's Pascal Context-59 format).
OUT gets overlay_STEM.png and pred_STEM.png (label map) per image and maskclip.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hw2_utils import (
    HelpFormatter,
    CLIError,
    atomic_path,
    check_output_path,
    command_line,
    describe_hardware,
    list_images,
    open_rgb,
    positive_float,
    positive_int,
    pyplot,
    require_dir,
    resolve_device,
    run_cli,
    save_figure,
    save_json,
)
from p7_clip.models import Clip, check_spec, load_clip
from p7_clip.zeroshot import class_embeddings

PASCAL_CONTEXT_59 = (
    "aeroplane bag bed bedclothes bench bicycle bird boat book bottle building bus cabinet car cat ceiling chair "
    "cloth computer cow cup curtain dog door fence floor flower food grass ground horse keyboard light motorbike "
    "mountain mouse person plate platform potted_plant road rock sheep shelves sidewalk sign sky snow sofa table "
    "track train tree truck tv_monitor wall water window wood"
).split()
IGNORE = 255


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--clip",
        required=True,
        metavar="ARCH=WEIGHTS",
        help="one model: ARCH=FOLDER, ARCH=FILE or ARCH=tiny",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--data", required=True, help="folder of .png/.jpg images")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="only the first N images (file-name order)"
    )
    p.add_argument(
        "--classes",
        required=True,
        help="comma list, a file with one name per line, or pascal-context-59",
    )
    p.add_argument(
        "--masks", default=None, help="folder of PNG label maps named like the images, for mIoU"
    )
    p.add_argument(
        "--reduce-zero-label", action="store_true", help="mask value 0 -> ignore, k -> k-1"
    )
    p.add_argument(
        "--size",
        type=positive_int,
        default=448,
        help="shorter image side fed to the encoder (rounded to the patch)",
    )
    p.add_argument(
        "--templates",
        choices=["single", "imagenet80", "maskclip85"],
        default="maskclip85",
        help="'a photo of a {}.', CLIP's 80 ImageNet templates, or those plus MaskCLIP's 5 scene "
        "templates (the official list), averaged",
    )
    p.add_argument(
        "--key-smoothing",
        type=positive_float,
        default=None,
        metavar="T",
        help="confidence threshold in [0, 1] below which a patch is smoothed over similar keys "
        "(official configs: 1.0)",
    )
    p.add_argument(
        "--denoise",
        type=positive_float,
        default=None,
        metavar="T",
        help="class-probability threshold in [0, 1] for prompt denoising (official configs: 0.5)",
    )
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- dense features


def _vit_tokens(visual, pixels: torch.Tensor) -> torch.Tensor:
    """Patch embedding + class token + positional embedding + ln_pre, as open_clip's own
    `_embeds`, except that the positional grid is resized (bicubic) when the image is."""
    x = visual.conv1(pixels)
    b, width, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    pos = visual.positional_embedding.to(x.dtype)
    gh, gw = visual.grid_size
    patch_pos = pos[1:]
    if (h, w) != (gh, gw):
        grid = patch_pos.reshape(1, gh, gw, width).permute(0, 3, 1, 2)
        patch_pos = (
            F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            .permute(0, 2, 3, 1)
            .reshape(h * w, width)
        )
    cls = visual.class_embedding.to(x.dtype).expand(b, 1, width)
    return visual.ln_pre(torch.cat([cls, x], dim=1) + torch.cat([pos[:1], patch_pos]))


def vit_dense(visual, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, D, h, w) in the joint embedding space, keys (B, width, h, w)) of a ViT.
    The last block runs whole except for the query-key mixing: every token's attention output
    is its own value, and the residual and the MLP stay, as in MaskCLIP's backbone. (Dropping
    them too is ClearCLIP's recipe, which also swaps in q-q attention: a different method.)"""
    blocks = visual.transformer.resblocks
    last = blocks[-1]
    if not isinstance(last.attn, torch.nn.MultiheadAttention) or not visual.transformer.batch_first:
        raise CLIError(
            "MaskCLIP here supports open_clip ViTs built with nn.MultiheadAttention blocks (the CLIP ViTs)"
        )
    x = _vit_tokens(visual, pixels)
    for block in blocks[:-1]:
        x = block(x)
    y = last.ln_1(x)
    _, k_weight, v_weight = last.attn.in_proj_weight.chunk(3)
    _, k_bias, v_bias = last.attn.in_proj_bias.chunk(3)
    out_proj = last.attn.out_proj
    v = x + last.ls_1(out_proj(F.linear(y, v_weight, v_bias)))
    v = v + last.ls_2(last.mlp(last.ln_2(v)))
    features = visual.ln_post(v) @ visual.proj
    # the official code sends q, k and v alike through out_proj
    keys = out_proj(F.linear(y, k_weight, k_bias))
    h, w = pixels.shape[-2] // visual.patch_size[0], pixels.shape[-1] // visual.patch_size[1]
    return _to_grid(features[:, 1:], h, w), _to_grid(keys[:, 1:], h, w)


def resnet_dense(visual, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same for open_clip's ModifiedResNet: attnpool's value and output projections
    applied at every position of the last stage (1x1 convolutions)."""
    x = visual.stem(pixels)
    for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = stage(x)
    h, w = x.shape[-2:]
    tokens = x.flatten(2).transpose(1, 2)
    pool = visual.attnpool
    features = pool.c_proj(pool.v_proj(tokens))
    return _to_grid(features, h, w), _to_grid(pool.k_proj(tokens), h, w)


def _to_grid(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return tokens.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)


def dense_features(visual, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(visual, "attnpool"):
        return resnet_dense(visual, pixels)
    if hasattr(visual, "transformer"):
        return vit_dense(visual, pixels)
    raise CLIError(
        f"MaskCLIP needs a CLIP ViT or ModifiedResNet image tower, not {type(visual).__name__}"
    )


# --------------------------------------------------------------------------- segmentation


# The official head's constants: probabilities are softmax(100 x cosine) (100 is OpenAI CLIP's
# logit scale), and a removed class gets the cosine -100, far below any real one (>= -1) and,
# unlike -inf, safe to interpolate (bilinear weights times -inf give NaN, which argmax picks).
SOFTMAX_SCALE = 100.0
REMOVED = -100.0


def patch_cosines(features: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Cosine of every unit patch feature with every (unit) class embedding: a 1x1 convolution
    whose weights are the (C, D) text embeddings. -> (B, C, h, w)."""
    weight = class_emb.to(features)[:, :, None, None]
    return F.conv2d(F.normalize(features, dim=1), weight)


def kept_classes(cosines: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, C): the classes prompt denoising keeps, those whose probability reaches `threshold`
    at some patch; a class that wins nowhere with confidence is probably absent. Unlike the
    official code, the most confident class always stays, so that a strict threshold cannot
    remove every class (which there labels the whole image class 0)."""
    probs = (SOFTMAX_SCALE * cosines).softmax(dim=1).flatten(2).amax(dim=2)
    keep = probs >= threshold
    keep[torch.arange(len(probs)), probs.argmax(dim=1)] = True
    return keep


def key_smoothing(cosines: torch.Tensor, keys: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, C, h, w) class probabilities softmax(100 x cosine), except at the patches whose top
    probability is below `threshold`: those get sum_j w_ij p_j over all patches j, with w = k k^T
    the similarity of the keys, so an unsure patch borrows from the patches that look like it.
    Each key channel is L2-normalised across the patches (not each key across its channels), as
    the official code's F.normalize with its default dim=1 on (B, N, width) keys does."""
    b, c, h, w = cosines.shape
    probs = (SOFTMAX_SCALE * cosines).softmax(dim=1).flatten(2)  # (B, C, N)
    k = F.normalize(keys.flatten(2), dim=2)  # (B, width, N)
    weighted = probs @ (k.transpose(1, 2) @ k)  # column i: sum_j p_j w_ji, and w is symmetric
    unsure = probs.amax(dim=1, keepdim=True) < threshold
    return torch.where(unsure, weighted, probs).reshape(b, c, h, w)


def segment(
    clip: Clip,
    pixels: torch.Tensor,
    class_emb: torch.Tensor,
    out_size: tuple[int, int],
    smoothing: float | None = None,
    denoise: float | None = None,
) -> torch.Tensor:
    """(B, C, H, W) class scores for preprocessed pixels, upsampled bilinearly to out_size: the
    patch cosines, refined in the official order (prompt denoising, then key smoothing, which
    turns them into probabilities). Removed classes are set to -inf only after the upsampling:
    key-smoothing weights can be negative, so a removed class's probability 0 could otherwise
    outscore every kept class at an unsure patch."""
    with torch.no_grad():
        features, keys = dense_features(clip.model.visual, pixels.to(clip.device))
        scores = patch_cosines(features.float(), class_emb.to(clip.device))
        keep = torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
        if denoise is not None:
            keep = kept_classes(scores, denoise)
            scores = scores.masked_fill(~keep[:, :, None, None], REMOVED)
        if smoothing is not None:
            scores = key_smoothing(scores, keys.float(), smoothing)
        scores = F.interpolate(scores, size=out_size, mode="bilinear", align_corners=False)
        return scores.masked_fill(~keep[:, :, None, None], float("-inf"))


def mean_iou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU over classes that occur in the masks or the predictions, per-class IoU with NaN
    for classes that occur in neither) from a (true, predicted) count matrix."""
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"), iou


def update_confusion(confusion: np.ndarray, mask: np.ndarray, pred: np.ndarray) -> None:
    n = len(confusion)
    valid = mask != IGNORE
    if (mask[valid] >= n).any():
        raise CLIError(f"mask holds class {int(mask[valid].max())} but only {n} classes were given")
    confusion += np.bincount(
        mask[valid].astype(np.int64) * n + pred[valid], minlength=n * n
    ).reshape(n, n)


# --------------------------------------------------------------------------- command line


def read_classes(spec: str) -> list[str]:
    if spec == "pascal-context-59":
        names = PASCAL_CONTEXT_59
    elif Path(spec).is_file():
        names = [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]
    else:
        names = [c.strip() for c in spec.split(",") if c.strip()]
    if not 2 <= len(names) < IGNORE:
        raise CLIError(f"--classes {spec!r}: need 2 to {IGNORE - 1} class names, got {len(names)}")
    return [n.replace("_", " ") for n in names]


# The 5 templates MaskCLIP's official list (tools/maskclip_utils/prompt_engineering.py) appends to
# CLIP's 80 ImageNet ones, which it holds in the same order as open_clip.
SCENE_TEMPLATES = [
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
]


def templates(kind: str) -> list[str]:
    if kind == "single":
        return ["a photo of a {}."]
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    imagenet = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]  # each is a lambda c: f"...{c}..."
    return imagenet + SCENE_TEMPLATES if kind == "maskclip85" else imagenet


def to_pixels(clip: Clip, image, size: int) -> torch.Tensor:
    """(1, 3, h, w): shorter side resized to about `size`, both sides multiples of the
    encoder's stride (the patch, or 32 for ResNets), normalised like CLIP's training data."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    visual = clip.model.visual
    stride = visual.patch_size[0] if hasattr(visual, "patch_size") else 32
    w, h = image.size
    scale = size / min(w, h)
    new_h, new_w = (max(stride, round(s * scale / stride) * stride) for s in (h, w))
    cfg = visual.preprocess_cfg
    # as CLIP's own preprocessing
    x = TF.to_tensor(image.resize((new_w, new_h), resample=Image.BICUBIC))
    return TF.normalize(x, cfg["mean"], cfg["std"])[None]


def plot_overlay(path: Path, image, pred: np.ndarray, classes: list[str], title: str) -> None:
    plt = pyplot()
    colours = plt.get_cmap("tab20")(np.arange(len(classes)) % 20)[:, :3]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    axes[0].imshow(image)
    axes[1].imshow(0.45 * np.asarray(image) / 255 + 0.55 * colours[pred])
    present, counts = np.unique(pred, return_counts=True)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colours[c]) for c in present[np.argsort(-counts)][:10]
    ]
    axes[1].legend(
        handles,
        [classes[c] for c in present[np.argsort(-counts)][:10]],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
    )
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path, tight=True)


def read_mask(
    folder: Path, stem: str, size: tuple[int, int], reduce_zero_label: bool
) -> np.ndarray:
    from PIL import Image

    path = folder / f"{stem}.png"
    if not path.is_file():
        raise CLIError(f"mask not found: {path} (one PNG label map per image, same name)")
    with Image.open(path) as im:
        mask = np.asarray(im).astype(np.int64)
    if mask.ndim != 2 or mask.shape != size:
        raise CLIError(
            f"{path}: expected a {size[0]}x{size[1]} single-channel label map, got shape {mask.shape}"
        )
    if reduce_zero_label:
        mask = np.where((mask == 0) | (mask == IGNORE), IGNORE, mask - 1)
    return mask


def main(argv=None) -> dict:
    args = parse_args(argv)
    for flag, threshold in (("--key-smoothing", args.key_smoothing), ("--denoise", args.denoise)):
        if threshold is not None and not 0 <= threshold <= 1:
            raise CLIError(f"{flag} {threshold:g}: a probability threshold, in [0, 1]")
    check_spec(args.clip)
    device = resolve_device(args.device)
    files = list_images(args.data)[: args.limit]
    classes = read_classes(args.classes)
    masks = require_dir(args.masks, "--masks") if args.masks else None
    out = check_output_path(args.out, folder=True)  # created by its first file, after the work
    clip = load_clip(args.clip, device)
    class_emb = class_embeddings(clip, classes, templates(args.templates))
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    from PIL import Image

    for f in files:
        image = open_rgb(f)
        size = (image.height, image.width)
        logits = segment(
            clip,
            to_pixels(clip, image, args.size),
            class_emb,
            size,
            args.key_smoothing,
            args.denoise,
        )
        pred = logits[0].argmax(dim=0).cpu().numpy()
        with atomic_path(out / f"pred_{f.stem}.png") as tmp:
            Image.fromarray(pred.astype(np.uint8)).save(tmp, format="PNG")
        plot_overlay(
            out / f"overlay_{f.stem}.png", image, pred, classes, f"MaskCLIP, {clip.name}: {f.name}"
        )
        if masks is not None:
            update_confusion(
                confusion, read_mask(masks, f.stem, size, args.reduce_zero_label), pred
            )
    record = {
        "command": command_line("p7_clip.maskclip", argv),
        "hardware": describe_hardware(device),
        "model": clip.name,
        "images": [f.name for f in files],
        "classes": classes,
        "templates": args.templates,
        "size": args.size,
        "key_smoothing": args.key_smoothing,
        "denoise": args.denoise,
    }
    if masks is not None:
        miou, iou = mean_iou(confusion)
        record.update(
            miou=round(miou, 4),
            iou={c: (None if np.isnan(v) else round(float(v), 4)) for c, v in zip(classes, iou)},
        )
        print(f"mIoU {100 * miou:.2f}% over {len(files)} images")
    print(f"{len(files)} overlays in {out}")
    save_json(out / "maskclip.json", record)
    return record


if __name__ == "__main__":
    run_cli(main)
