"""open_clip models from local files, or tiny random ones for smoke runs, plus the
embedding helpers every P7 script shares.

A model is named on the command line by a spec `ARCH=WEIGHTS`:

    ViT-B-32=weights/ViT-B-32-openai/         a folder with open_clip_config.json + weights (a hub snapshot)
    ViT-B-32-quickgelu=weights/vit_b32.bin    an open_clip checkpoint file for open_clip's built-in ARCH config
    RN50=tiny                                 ARCH's shape shrunk to a few narrow layers, random weights (seed 0)

The folder form is the safest: its config carries quick_gelu, which OpenAI's weights need
(with a bare file, name the `-quickgelu` config yourself). Tiny models only check that a
pipeline runs end to end; their accuracies are chance level and mean nothing.

P7 loads open_clip, not the transformers CLIP folders that P3, P8 and the grader share
(evaluation.clip_scores.load_clip): MaskCLIP rewires open_clip's visual tower (its last block,
ln_post, proj) and the studies compare architectures, such as RN50, that transformers lacks.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hw2_utils import CLIError, error_summary, positive_int, progress

# Where the OpenAI weights live on the Hugging Face hub, for the "how to get it" hint.
HUB_REPOS = {
    "ViT-B-32": "timm/vit_base_patch32_clip_224.openai",
    "ViT-B-16": "timm/vit_base_patch16_clip_224.openai",
    "RN50": "timm/resnet50_clip.openai",
}
TINY = "tiny"
TINY_SEED = 0
# Shrunken shapes: the same tower types as the real configs, small enough for a CPU test.
_TINY_TEXT = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
_TINY_VIT = dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16)
_TINY_RESNET = dict(image_size=64, layers=[1, 1, 1, 1], width=8, head_width=16)


@dataclass
class Clip:
    name: str  # the label used in tables, e.g. "ViT-B-32" or "RN50 (tiny random)"
    model: torch.nn.Module
    preprocess: object  # PIL image -> normalised (3, S, S) tensor
    tokenizer: object  # list of strings -> (N, 77) token ids
    device: torch.device

    @property
    def tag(self) -> str:
        """File-name form of the name: "RN50 (tiny random)" -> "RN50_tiny"."""
        return self.name.replace(" (tiny random)", "_tiny")

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)


def weights_hint(arch: str, weights: str) -> str:
    base = arch.removesuffix("-quickgelu")
    repo = HUB_REPOS.get(base, f"the open_clip hub repository for {base}")
    return (
        f"download it where there is internet, e.g. `huggingface-cli download {repo} --local-dir {weights}`, "
        f"and pass {arch}={weights}; or use {arch}=tiny for a random smoke-test model"
    )


def parse_spec(spec: str) -> tuple[str, str]:
    arch, sep, weights = spec.partition("=")
    if not sep or not arch or not weights:
        raise CLIError(
            f"model spec {spec!r} must be ARCH=WEIGHTS (a file, a folder, or 'tiny'), e.g. ViT-B-32=tiny"
        )
    return arch, weights


def tiny_config(arch: str) -> dict:
    """Keyword overrides that shrink open_clip's built-in `arch` config (ViT or ModifiedResNet)."""
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise CLIError(f"unknown open_clip architecture {arch!r}; e.g. ViT-B-32, ViT-B-16, RN50")
    resnet = isinstance(cfg["vision_cfg"]["layers"], (list, tuple))
    return dict(
        embed_dim=32,
        text_cfg=dict(_TINY_TEXT),
        vision_cfg=dict(_TINY_RESNET if resnet else _TINY_VIT),
    )


def check_spec(spec: str) -> tuple[str, str, str]:
    """(arch, weights, open_clip source) of a spec, or a CLIError naming the missing weights and
    how to get them. Cheap: scripts call it for every model before any slow work."""
    arch, weights = parse_spec(spec)
    if weights == TINY:
        return arch, weights, arch
    path = Path(weights)
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise CLIError(
                f"{path}/open_clip_config.json not found: not an open_clip model folder; "
                + weights_hint(arch, weights)
            )
        return arch, weights, f"local-dir:{weights}"
    if not path.is_file():
        raise CLIError(
            f"CLIP weights for {arch} not found: {weights}; " + weights_hint(arch, weights)
        )
    return arch, weights, arch


def check_specs(specs: list[str]) -> None:
    for spec in specs:
        check_spec(spec)


def load_clip(spec: str, device: torch.device | str = "cpu") -> Clip:
    """Build the model a spec names (see the module docstring); every failure is a CLIError."""
    import open_clip

    arch, weights, source = check_spec(spec)
    device = torch.device(device)
    name, kwargs = arch, {}
    if weights == TINY:
        name, kwargs = f"{arch} (tiny random)", tiny_config(arch)
    elif not source.startswith("local-dir:"):
        kwargs = {"pretrained": weights}
    level = logging.getLogger().level
    # open_clip warns that tiny models are random: we know
    logging.getLogger().setLevel(logging.ERROR)
    try:
        # open_clip draws its init from the global generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(source, **kwargs)
        tokenizer = open_clip.get_tokenizer(source)
    except (
        RuntimeError,
        ValueError,
        OSError,
        KeyError,
        EOFError,
        TypeError,
        pickle.UnpicklingError,
    ) as e:
        # a 0-byte, truncated or foreign weights file fails inside torch.load with any of these
        raise CLIError(f"cannot load {arch} from {weights} ({error_summary(e, 300)})") from None
    finally:
        logging.getLogger().setLevel(level)
    return Clip(name, model.to(device).eval(), preprocess, tokenizer, device)


@torch.no_grad()
def encode_texts(clip: Clip, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """(N, D) unit text embeddings on the CPU."""
    out = [
        clip.model.encode_text(
            clip.tokenizer(texts[i : i + batch_size]).to(clip.device), normalize=True
        )
        .float()
        .cpu()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def encode_images(
    clip: Clip,
    images: Sequence,
    batch_size: int = 128,
    load: Callable | None = None,
    desc: str = "images",
) -> torch.Tensor:
    """(N, D) unit image embeddings. `images` are PIL images, or anything `load` turns into
    one (a path, an array); they are preprocessed one batch at a time, so a 10,000-image set
    at 224 px never sits in memory at once."""
    out = []
    for i in progress(range(0, len(images), batch_size), desc=desc):
        batch = [load(x) if load else x for x in images[i : i + batch_size]]
        pixels = torch.stack([clip.preprocess(im) for im in batch]).to(clip.device)
        out.append(clip.model.encode_image(pixels, normalize=True).float().cpu())
    return torch.cat(out)


def logit_scale(clip: Clip) -> float:
    """CLIP's learned softmax temperature (100 for the OpenAI models)."""
    return float(clip.model.logit_scale.detach().exp())


def add_model_args(parser, default_batch: int = 128) -> None:
    """The options every P7 script shares: which models, on which device, in what batches."""
    parser.add_argument(
        "--clip",
        action="append",
        required=True,
        metavar="ARCH=WEIGHTS",
        help="model to run, repeatable: ARCH=FOLDER, ARCH=FILE or ARCH=tiny (see p7_clip/models.py)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--batch-size", type=positive_int, default=default_batch, help="images per forward pass"
    )
