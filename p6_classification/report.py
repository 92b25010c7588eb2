"""The report's P6 section, built only from what the P6 scripts write under RUNS_DIR/p6:
bench.json and aug/ (bench/p6_classification.py), resnet18/ and vit/ (full training runs),
cam/ (cam.py). A missing input is named with the command that produces it."""
from __future__ import annotations

import json
from pathlib import Path

from p6_classification.aug_study import table as aug_table

SMOKE = "_Smoke-size run (--subset): it only shows the pipeline runs; these are not results._"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _measured(record: dict, command: str) -> str:
    note = f"Measured with `{command}` on {record['hardware']}."
    return note + (f" {SMOKE}" if "--subset" in command else "")


def _throughput(bench: dict | None, d: Path) -> list[str]:
    lines = ["### Training throughput on the CPU", ""]
    if not bench or "throughput" not in bench:
        return lines + [f"_Missing: run `python bench/p6_classification.py --work {d} --parts throughput`._", ""]
    t = bench["throughput"]
    lines += [f"ResNet-18 (width {t['width']}, CIFAR stem), batches of {t['batch']} real images, forward + backward + "
              f"SGD step, timed over {t['steps']} step(s) after one warm-up step. {_measured(t, t['command'])}", "",
              "| precision | memory format | images/s |", "| --- | --- | --- |"]
    lines += [f"| {r['dtype']} | {'channels_last' if r['channels_last'] else 'NCHW'} | {r['images_per_s']:.1f} |"
              for r in t["rows"]]
    return lines + [""]


def _slice(bench: dict | None, d: Path) -> list[str]:
    lines = ["### ResNet-18 on the shared CIFAR-10 slice", ""]
    if not bench or "slice" not in bench:
        return lines + [f"_Missing: run `python bench/p6_classification.py --work {d} --parts slice`._", ""]
    s = bench["slice"]
    arch = s["arch"]
    lines += [f"ResNet-18 ({arch['stem']} stem, width {arch['width']}), preset {s['preset']}, {s['epochs']} epochs, "
              f"{s['precision'].removeprefix('torch.')}; {s['train_images']} training / {s['val_images']} validation "
              f"images, test set ({s['test_images']} images) evaluated once after the last epoch. "
              f"{_measured(s, s['bench_command'])}", "",
              "| val acc (final epoch) | test acc (final epoch) | training time |", "| --- | --- | --- |",
              f"| {s['val_acc']:.4f} | {s['test_acc']:.4f} | {s['train_seconds']:.0f} s |", ""]
    return lines


def _aug(d: Path) -> list[str]:
    lines = ["### Augmentation study on the slice", ""]
    study = _read(d / "aug" / "aug_study.json")
    if study is None:
        return lines + [f"_Missing: run `python bench/p6_classification.py --work {d} --parts aug`._", ""]
    arch = study["arch"]
    lines += [f"One run per preset with the same seed, split and budget: ResNet-18 width {arch.get('width')}, "
              f"{study['epochs']} epochs, {study['train_images']} training / {study['val_images']} validation / "
              f"{study['test_images']} test images, accuracies of the final epoch. "
              f"{_measured(study, study['command'])}", "", aug_table(study["rows"]), ""]
    figure = d / "aug" / "aug_study.png"
    if figure.is_file():
        lines += [f"![augmentation study]({figure.resolve()})", ""]
    return lines


def _full_runs(d: Path) -> list[str]:
    lines = ["### Full CIFAR-10 (GPU recipes)", ""]
    commands = {"resnet18": f"python p6_classification/train.py --data data/cifar10 --download --out {d}/resnet18",
                "vit": f"python p6_classification/vit_finetune.py --data data/cifar10 --weights "
                       f"weights/vit_b16/model.safetensors --out {d}/vit"}
    for name, command in commands.items():
        r = _read(d / name / "result.json")
        if r is None:
            lines += [f"- {name}: _missing: run `{command}`_"]
            continue
        lines += [f"- {name} ({r['preset']}, {r['epochs']} epochs, {r['precision'].removeprefix('torch.')}, "
                  f"{r['world_size']} process(es)): val acc {r['val_acc']:.4f}, test acc {r['test_acc']:.4f} "
                  f"(final epoch), {r['train_seconds'] / 60:.1f} min training. {_measured(r, r['command'])}"]
    return lines + [""]


def _cams(d: Path) -> list[str]:
    lines = ["### Class activation maps", ""]
    for name, caption in (("resnet18", "ResNet-18: CAM (ours) and Grad-CAM on layer4"),
                          ("vit", "ViT: Grad-CAM on the last block's norm1")):
        figure = d / "cam" / f"cam_{name}.png"
        if figure.is_file():
            lines += [f"{caption}; each row is titled with the predicted and the true class.", "",
                      f"![{caption}]({figure.resolve()})", ""]
        else:
            lines += [f"_{caption}: missing: run `python p6_classification/cam.py --checkpoint {d}/{name}/final.pt "
                      f"--data data/cifar10 --out {d}/cam`._", ""]
    return lines


def section(runs_dir: str | Path) -> str:
    d = Path(runs_dir) / "p6"
    bench = _read(d / "bench.json")
    lines = ["## P6: CIFAR-10 classification: ResNet-18, augmentation, CAM, ViT fine-tuning", "",
             "ResNet-18 with a CIFAR stem (3x3 conv, no max-pool) or torchvision's (p6_classification/models.py), "
             "SGD with Nesterov momentum, linear warmup then cosine decay. Honest protocol: a tenth of the training "
             "images (5,000 of CIFAR-10's 50,000) are held out and all choices are made on them; the test set is "
             "evaluated once, after the last epoch, and that final-epoch accuracy is reported. The ViT is timm's "
             "vit_base_patch16_224 with its last blocks, final norm and a new 10-class head trained, the rest frozen, "
             "on CIFAR images upsampled to 224 px.", ""]
    lines += _throughput(bench, d) + _slice(bench, d) + _aug(d) + _full_runs(d) + _cams(d)
    return "\n".join(lines)
