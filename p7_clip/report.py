"""The report's P7 section, built only from the JSON records and figures that p7_clip's
scripts write under RUNS_DIR/p7 (bench/p7_clip.py runs them all). A missing input is named
together with the command that produces it; no number appears unless a file holds it."""

from __future__ import annotations

import json
from pathlib import Path

from hw2_utils import markdown_table, missing, read_record, record_errors

MODELS = "--clip ViT-B-32=weights/ViT-B-32-openai --clip RN50=weights/RN50-openai"
# open_clip's published zero-shot CIFAR-10 accuracy of the OpenAI weights (its results table,
# as quoted in issue 10): a reference to compare with, not a number measured here.
ANCHORS = {"ViT-B-32": "89.8%", "RN50": "71.6%"}
TINY_NOTE = (
    "_These numbers come from tiny random-weight models: they only show that the pipeline runs on "
    "the real images; real accuracies need the real weights (see p7_clip/models.py)._\n"
)


def _load(path: Path, command: str) -> tuple[dict | None, str]:
    """(the record, a line citing its command and hardware), or (None, the command that writes it)."""
    info = read_record(path)
    if info is None:
        return None, missing("This study", command) + "\n"
    return info, _note(info)


def _note(info: dict) -> str:
    note = f"_Measured with `{info.get('command', '?')}` on {info.get('hardware', '?')}._\n"
    return note + (TINY_NOTE if "(tiny random)" in json.dumps(info) else "")


def _figure(path: Path, caption: str) -> str:
    return (
        f"![{caption}]({path.as_posix()})\n" if path.is_file() else f"_(figure missing: {path})_\n"
    )


def _similarity(d: Path) -> str:
    info, note = _load(
        d / "similarity.json",
        f"python -m p7_clip.similarity {MODELS} --data COCO_ROOT --n 10 --out {d}",
    )
    if info is None:
        return note
    lines = [
        f"{len(info['images'])} COCO val images, each with its first caption; cosine of unit embeddings.",
        "",
    ]
    lines += markdown_table(
        [
            "model",
            "mean cosine, own pair",
            "mean cosine, other pairs",
            "images ranking their own text first",
        ],
        [
            [
                name,
                f"{m['diagonal_mean']:.4f}",
                f"{m['off_diagonal_mean']:.4f}",
                f"{m['own_text_first']}/{len(info['images'])}",
            ]
            for name, m in info["models"].items()
        ],
    )
    figures = [
        _figure(d / f"similarity_{m['tag']}.png", f"{name}: similarity matrix")
        for name, m in info["models"].items()
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(figures) + "\n" + note


def _zeroshot(d: Path) -> str:
    info, note = _load(
        d / "zeroshot.json",
        f"python -m p7_clip.zeroshot {MODELS} --data cifar-10-batches-py --out {d}",
    )
    if info is None:
        return note
    models = list(info["accuracy"])
    lines = [
        f"CIFAR-10 test, {info['images']} images ({info['data']}). With several templates the class "
        "embedding is the renormalised mean of their unit text embeddings.",
        "",
    ]
    lines += markdown_table(
        ["prompt design", *models],
        [
            [f"`{design}`", *(f"{100 * info['accuracy'][m][design]:.2f}%" for m in models)]
            for design in info["designs"]
        ],
    )
    quoted = [
        f"{arch} {acc}"
        for arch, acc in ANCHORS.items()
        if any(m.split(" ")[0] == arch for m in models)
    ]
    if quoted:
        lines += [
            "",
            "Reference, quoted from open_clip's results table (OpenAI weights, all 10,000 test images): "
            + ", ".join(quoted)
            + ".",
        ]
    figures = [
        _figure(d / f"confusion_{c['tag']}.png", f"{m}: confusion matrix ({c['design']})")
        for m, c in info["confusion"].items()
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(figures) + "\n" + note


def _retrieval(d: Path) -> str:
    info, note = _load(
        d / "retrieval.json",
        f"python -m p7_clip.retrieval {MODELS} --data COCO_ROOT --n 100 --out {d}",
    )
    if info is None:
        return note
    ks = ("1", "5", "10")
    lines = [
        f"The first {info['images']} COCO val images and their {info['captions']} captions; recall in %. "
        "T2I: a caption's own image is among the k closest images; I2T: one of an image's own captions is "
        "among the k closest captions.",
        "",
    ]
    lines += markdown_table(
        ["model", *(f"{d_} R@{k}" for d_ in ("T2I", "I2T") for k in ks)],
        [
            [
                name,
                *(f"{100 * r[d_][k]:.1f}" for d_ in ("text_to_image", "image_to_text") for k in ks),
            ]
            for name, r in info["recall"].items()
        ],
    )
    figures = [
        _figure(d / f"query_{tag}.png", f'{m}: top images for "{info["query"]}"')
        for m, tag in info["tags"].items()
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(figures) + "\n" + note


def _maskclip(d: Path) -> str:
    records = sorted(d.glob("*/maskclip.json"))
    if not records:
        return (
            missing(
                "This study",
                "python -m p7_clip.maskclip --clip ViT-B-16=weights/ViT-B-16-openai --data IMG_DIR "
                f"--classes pascal-context-59 --masks MASK_DIR --reduce-zero-label --out {d}/ViT-B-16",
            )
            + "\n"
        )
    parts = []
    for path in records:
        info, note = _load(path, "")
        with record_errors(path):
            parts += _maskclip_model(path, info, note)
    return "\n".join(parts)


def _maskclip_model(path: Path, info: dict, note: str) -> list[str]:
    options = f"key smoothing {info['key_smoothing']}, prompt denoising {info['denoise']}, prompts {info['templates']}"
    miou = (
        f" mIoU over the {len(info['images'])} images: {100 * info['miou']:.2f}%."
        if "miou" in info
        else " No masks were given, so no mIoU."
    )
    return [
        f"#### {info['model']}\n\n{len(info['classes'])} classes, shorter side {info['size']} px, {options}.{miou}\n",
        *[
            _figure(path.parent / f"overlay_{Path(name).stem}.png", f"MaskCLIP overlay: {name}")
            for name in info["images"][:3]
        ],
        note,
    ]


def _probe(d: Path) -> str:
    paths = sorted(d.glob("*/result.json"))
    loaded = []
    for path in paths:  # train.py's numbers are its run record's metrics
        with record_errors(path):
            info = read_record(path)["metrics"]
        loaded.append((info, _note(info)))
    # worded apart from "not produced yet", which counts the five studies and the bench
    if not loaded:
        return (
            f"_No probe record yet: run `python -m p7_clip.train --clip ViT-B-32=weights/ViT-B-32-openai "
            f"--data cifar-10-batches-py --out {d}/ViT-B-32` (and the same for RN50)._\n"
        )
    with record_errors(paths[0]):
        designs = list(loaded[0][0]["zero_shot_accuracy"])
    lines = [
        "Logistic regression (L-BFGS) on frozen unit image embeddings; C chosen on 10% of train held out, "
        "then fitted on all of train; test accuracy beside zero-shot on the same test images.",
        "",
    ]
    rows = []
    for path, (info, _) in zip(paths, loaded):
        with record_errors(path):
            rows.append(_probe_row(info, designs))
    lines += markdown_table(
        [
            "model",
            "train / test images",
            "C",
            "val",
            "linear probe",
            *(f"zero-shot `{x}`" for x in designs),
        ],
        rows,
    )
    # tiny note once
    notes = dict.fromkeys(line for _, note in loaded for line in note.splitlines(keepends=True))
    return "\n".join(lines) + "\n\n" + "".join(notes)


def _probe_row(info: dict, designs: list[str]) -> list[str]:
    val = info["val_accuracy"][f"{info['C']:.4g}"]
    return [
        info["model"],
        f"{info['images']['train']} / {info['images']['test']}",
        f"{info['C']:g}",
        f"{100 * val:.2f}%",
        f"{100 * info['test_accuracy']:.2f}%",
        *(f"{100 * info['zero_shot_accuracy'][x]:.2f}%" for x in designs),
    ]


def _robustness(d: Path) -> str:
    info, note = _load(
        d / "robustness.json",
        f"python -m p7_clip.robustness {MODELS} --data cifar-10-batches-py --limit 1000 --out {d}",
    )
    if info is None:
        return note
    lines = [
        f"Zero-shot CIFAR-10 ({info['images']} test images, prompts: {info['design']}). Each cell: accuracy / "
        "mean probability of the true class, from no perturbation to the strongest.",
        "",
    ]
    for kind, levels in info["levels"].items():
        lines += [f"**{kind.replace('_', ' ')}**", ""]
        lines += markdown_table(
            ["model", *levels],
            [
                [
                    name,
                    *(
                        f"{r['accuracy']:.3f} / {r['true_class_probability']:.3f}"
                        for r in by_kind[kind]
                    ),
                ]
                for name, by_kind in info["results"].items()
            ],
        )
        lines.append("")
    return (
        "\n".join(lines)
        + "\n"
        + _figure(d / "robustness.png", "accuracy and true-class probability")
        + "\n"
        + note
    )


def _bench(d: Path) -> str:
    info, note = _load(
        d / "bench.json",
        f"python -m bench.p7_clip {MODELS} --cifar cifar-10-batches-py --coco COCO_ROOT --out {d}",
    )
    if info is None:
        return note
    return (
        "Wall time per part: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in info["seconds"].items())
        + f" (models: {', '.join(info['models'])}).\n\n"
        + note
    )


def section(runs_dir: str | Path) -> str:
    """Markdown for P7, from RUNS_DIR/p7/{similarity,zeroshot,probe/*,retrieval,maskclip/*,
    robustness}/ and bench.json."""
    d = Path(runs_dir) / "p7"
    single = {}  # the parts that read one record each
    for name, render, record in (
        ("similarity", _similarity, "similarity/similarity.json"),
        ("zeroshot", _zeroshot, "zeroshot/zeroshot.json"),
        ("retrieval", _retrieval, "retrieval/retrieval.json"),
        ("robustness", _robustness, "robustness/robustness.json"),
    ):
        with record_errors(d / record):
            single[name] = render(d / name)
    with record_errors(d / "bench.json"):
        bench = _bench(d)
    return "\n".join(
        [
            "## P7: CLIP — similarity, zero-shot prompts, COCO retrieval, MaskCLIP, robustness",
            "",
            "All parts use open_clip models loaded from local weight files (ViT-B-32 and RN50; ViT-B-16 suits "
            "MaskCLIP's finer patches). Embeddings are L2-normalised, so every score is a cosine.",
            "",
            "### (a) Image-text similarity matrix",
            "",
            single["similarity"],
            "### (b) Zero-shot CIFAR-10 and prompt design",
            "",
            single["zeroshot"],
            "### Linear probe vs zero-shot",
            "",
            _probe(d / "probe"),
            "### (c) COCO text-image retrieval",
            "",
            single["retrieval"],
            "### (d) MaskCLIP dense segmentation",
            "",
            "Our MaskCLIP, as the official code (chongzhou96/MaskCLIP) computes it: the last block "
            "runs with every patch attending only to itself (its value and out-projection, then the "
            "residual and the MLP), then ln_post and proj; the class text embeddings (by default "
            "averaged over the official 85 prompt templates) act as 1×1 convolution weights on the "
            "unit features. Prompt denoising, then key smoothing, refine softmax(100·cosine) per "
            "patch, and the scores are upsampled bilinearly.",
            "",
            _maskclip(d / "maskclip"),
            "### Robustness to noise, blur and rotation",
            "",
            single["robustness"],
            "### Cost",
            "",
            bench,
        ]
    )
