"""The report's P6 section, built only from what the P6 scripts write under RUNS_DIR/p6:
bench.json (bench/p6_classification.py: throughput, the full run), resnet18/ (that run),
aug/ (the augmentation study), cam/ (figures and the deletion metric) and vit/ (a ViT
fine-tune, GPU and weights only); where RUNS_DIR/p6 lacks a record, its copy committed
beside the shipped model (copied there by hand when shipped). A missing input is named with
the command that produces it. `python -m p6_classification.report --out report/runs/p6` lays the
shipped figures out for the page (CAM's ten rows in two columns, the deletion curves of CAM's
orders alone: Grad-CAM's lie on them)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from scipy.stats import binomtest

from hw2_utils import (
    HelpFormatter,
    atomic_path,
    markdown_table,
    missing,
    read_record,
    record_errors,
    run_cli,
)
from p6_classification.aug_study import table as aug_table
from p6_classification.infer import CHECKPOINTS, TTA_DEFAULT

# A record's name under RUNS_DIR/p6 -> the name of its committed copy in CHECKPOINTS (copied
# there by hand when shipped, p6_classification/checkpoints/README.md).
SHIPPED_RECORDS = {
    "bench.json": "p6_bench.json",
    "resnet18/log.csv": "resnet18_train_log.csv",
    "resnet18/curves.png": "resnet18_curves.png",
    "aug/aug_study.json": "aug_study.json",
    "aug/aug_study.png": "aug_study.png",
    "cam/cam_resnet18.png": "cam_resnet18.png",
    "cam/deletion_resnet18.json": "deletion_resnet18.json",
    "cam/deletion_resnet18.png": "deletion_resnet18.png",
}

FIGURES_COMMAND = "python -m p6_classification.report --out {d}"
LAST_EPOCHS = 10  # the flat end of the shipped run's validation curve

SMOKE = "_Smoke-size run (--limit): it only shows the pipeline runs; these are not results._"
BENCH = "python -m bench.p6_classification"
# the GPU study (p6_classification/checkpoints/README.md has the whole command)
AUG_STUDY = "python -m p6_classification.aug_study --data ../shared/data/cifar10_full --epochs 30"


def _find(d: Path, record: str) -> Path:
    """RUNS_DIR/p6/<record>, or the copy shipped beside the model (a fresh clone has only that)."""
    own = d / record
    return own if own.is_file() else CHECKPOINTS / SHIPPED_RECORDS[record]


def _measured(record: dict, command: str) -> str:
    note = f"Measured with `{command}` on {record['hardware']}."
    return note + (f" {SMOKE}" if "--limit" in command else "")


def _missing(command: str) -> list[str]:
    return [missing("This part", command), ""]


def _throughput(bench: dict, d: Path) -> list[str]:
    lines = ["### Training throughput on the CPU", ""]
    t = bench.get("throughput")
    if t is None:
        return lines + _missing(f"{BENCH} --work {d} --parts throughput")
    tv = "torchvision_images_per_s" in t["rows"][0]
    lines += [
        f"ResNet-18 (width {t['width']}, CIFAR stem) against torchvision's resnet18 with the same stem, in the "
        f"same run: batches of {t['batch']} real images, forward + backward + SGD step, {t['steps']} timed steps "
        f"each after two warm-up steps, the two models' steps alternating; images/s from the median step, the "
        f"ratio the median of the rounds' ratios. {_measured(t, t['bench_command'])} bf16 units on this CPU: "
        f"{'yes' if t['cpu_has_bf16'] else 'no'}; the defaults (`--precision auto`, "
        "`--memory-format channels_last`) pick "
        f"{t['auto']['dtype']} {'channels_last' if t['auto']['channels_last'] else 'NCHW'}"
        f"{' (the fastest row)' if t['auto_is_fastest'] else ' (not the fastest row here)'}.",
        "",
    ]
    lines += markdown_table(
        [
            "precision",
            "memory format",
            "ours, images/s",
            *(
                ["torchvision, images/s", "ours / torchvision, median of per-round ratios"]
                if tv
                else []
            ),
        ],
        [
            [
                r["dtype"],
                "channels_last" if r["channels_last"] else "NCHW",
                f"{r['ours_images_per_s']:.1f}",
                *(
                    [f"{r['torchvision_images_per_s']:.1f}", f"{r['ours_over_torchvision']:.3f}"]
                    if tv
                    else []
                ),
            ]
            for r in t["rows"]
        ],
    )
    costs = t["augmentation_us_per_image"]
    lines += [
        "",
        f"Per-image cost of each preset's training transform (on one thread) "
        f"against the model's training step at the fastest setting, {t['model_step_us_per_image']:.0f} µs "
        f"per image: " + ", ".join(f"{name} {us:.0f} µs" for name, us in costs.items()) + ".",
        "",
    ]
    return lines


def _full(bench: dict, d: Path) -> list[str]:
    lines = ["### ResNet-18 on the whole CIFAR-10", ""]
    r = bench.get("full")
    if r is None:
        return lines + _missing(f"{BENCH} --work {d} --parts full")
    arch, also = r["arch"], r.get("also_test")
    lines += [
        f"ResNet-18 ({arch['stem']} stem, width {arch['width']}), preset {r['preset']}, {r['epochs']} epochs of "
        f"{r['batch_size']}, {r['precision'].removeprefix('torch.')}, {r['world_size']} process(es); "
        f"{r['train_images']} training / {r['val_images']} validation images; the test sets are scored once, "
        f"after the last epoch. Train command: `{r['command']}`. {_measured(r, r['bench_command'])}",
        "",
    ]
    lines += markdown_table(
        [
            "val acc",
            "test acc, CIFAR-10 (JPEG copy)",
            "test acc, official pixels",
            "training time",
            "trained on",
        ],
        [
            [
                f"{r['val_acc']:.4f}",
                f"{r['test_acc']:.4f} ({r['test_images']} images)",
                f"{also['test_acc']:.4f} ({also['test_images']} images)" if also else "-",
                f"{r['train_seconds'] / 60:.0f} min"
                if r["train_seconds"] >= 600
                else f"{r['train_seconds']:.0f} s",
                r["hardware"],
            ]
        ],
    ) + [""]
    exported = r.get("exported_fp16_test_acc")
    if exported:
        lines += [
            "The shipped file holds fp16 weights; loaded as `infer.py` loads it (fp32 compute) it scores "
            + " and ".join(
                f"{exported[k]:.4f} on the {name}"
                for k, name in (
                    ("test", "JPEG test images"),
                    ("also_test", "official-pixel images"),
                )
                if k in exported
            )
            + f" (the table: the model in training, {r['precision'].removeprefix('torch.')}).",
            "",
        ]
    log = _find(d, "resnet18/log.csv")
    if log.is_file():
        lines += _log_reading(log)
    curves = _find(d, "resnet18/curves.png")
    if curves.is_file():
        lines += [
            f"![ResNet-18 training curves]({curves.resolve()})",
            "",
            f"Per epoch, as a table: `{log.resolve()}`.",
            "",
        ]
    return lines


def _log_reading(log: Path) -> list[str]:
    """What the shipped run's log says about more epochs: its last train loss and val range."""
    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    last = [float(r["val_acc"]) for r in rows[-LAST_EPOCHS:]]
    return [
        f"The training loss ends at {float(rows[-1]['train_loss']):.3f} (the network fits its training "
        f"images) and validation accuracy stays within {min(last):.3f}-{max(last):.3f} over the last "
        f"{LAST_EPOCHS} epochs (the log): more epochs of this recipe would buy little. The JPEG copy is "
        "the likely limit: the same architecture and augmentation reach 96.0% when trained on the "
        "official pixels (DeVries & Taylor 2017, ResNet-18 with cutout, 200 epochs), and every image "
        "here, train and test, went through a lossy re-encoding. The 1,017 official-pixel images are a "
        "different, smaller draw of the test set (about ±1.5 points at 95%), so the gap between the two "
        "test columns is not a measure of the JPEG loss.",
        "",
    ]


def _tta(bench: dict, d: Path) -> list[str]:
    lines = ["### Test-time flip", ""]
    t = bench.get("tta")
    if t is None:
        return lines + _missing(f"{BENCH} --work {d} --parts tta")
    val, extra = t["val_acc"], t["also_test"]
    fixes, breaks = t["val_flip_fixes"], t["val_flip_breaks"]
    # McNemar's exact test: if the flip changed nothing, each discordant image is a coin toss
    p_value = binomtest(fixes, fixes + breaks, 0.5).pvalue if fixes + breaks else 1.0
    lines += [
        f"The same file scored by `infer.py` without and with `--tta flip` (the mean of each image's and its "
        f"mirror image's logits) on the {t['val_images']} validation images: the flip fixes {fixes} and breaks "
        f"{breaks} of them (exact McNemar test p = {p_value:.2f}"
        + (", so val alone does not show that it helps" if p_value >= 0.05 else "")
        + f"). The rule, the flip when it scores higher on val, chooses **{t['chosen']}**; only that is "
        "scored on the test sets here"
        + (
            ", and it is `infer.py`'s default (TTA_DEFAULT)."
            if t["chosen"] != "none" and TTA_DEFAULT == t["chosen"]
            else "."
        )
        + f" {_measured(t, t['bench_command'])}",
        "",
    ]
    lines += markdown_table(
        [
            "test-time augmentation",
            "val acc",
            "test acc, CIFAR-10 (JPEG copy)",
            "test acc, official pixels",
        ],
        [
            [
                tta + (" (chosen)" if tta == t["chosen"] else ""),
                f"{val[tta]:.4f}",
                f"{t['test_acc']:.4f} ({t['test_images']} images)"
                if tta == t["chosen"]
                else "not scored here",
                f"{extra['test_acc']:.4f} ({extra['test_images']} images)"
                if tta == t["chosen"]
                else "not scored here",
            ]
            for tta in val
        ],
    )
    return lines + [""]


def _aug(d: Path) -> list[str]:
    lines = ["### Augmentation study", ""]
    study = read_record(_find(d, "aug/aug_study.json"))
    if study is None:
        return lines + _missing(f"{AUG_STUDY} --out {d}/aug")
    arch, noise = study["arch"], study.get("spread")
    lines += [
        f"One run per preset with the same seed, split and budget: ResNet-18 width {arch.get('width')}, "
        f"{study['epochs']} epochs, {study['train_images']} training / {study['val_images']} validation / "
        f"{study['test_images']} test images, accuracies of the final epoch. {_measured(study, study['command'])}"
        + (f" ({study['command_note']}.)" if "command_note" in study else "")
    ]
    if noise:
        seeds = ", ".join(
            f"{r.get('seed', 'main')}: {r['test_acc']:.4f}" for r in study["seed_runs"]
        )
        lines += [
            f"Seed-to-seed spread of {study['spread_preset']} over {len(study['seed_runs'])} seeds ({seeds}): "
            f"{noise['test_acc_spread']:.4f} test, {noise['val_acc_spread']:.4f} val; a gap to "
            f"{study['spread_preset']} within it is marked n.s. (not significant)."
        ]
    lines += ["", aug_table(study["rows"], study.get("spread_preset"), noise), ""]
    lines += [
        f"At this budget ({study['epochs']} epochs of a width-{arch.get('width')} network) "
        "augmentation mostly costs: the less a preset perturbs the images, the better it scores, "
        "because a short run of a narrow network underfits and augmentation makes the task harder "
        "still. The usual finding is that it pays in long schedules, which this study does not "
        "measure: it says nothing about which preset would win over the shipped model's epochs, "
        "whose `cutout` was chosen from the literature before any run, not from this table. The "
        f"study at the shipped width (`{AUG_STUDY} --out outputs/p6/aug`, 30 epochs "
        "each) needs a GPU session and has not run yet.",
        "",
    ]
    figure = _find(d, "aug/aug_study.png")
    if figure.is_file():
        lines += [f"![augmentation study]({figure.resolve()})", ""]
    return lines


def make_figures(out: Path) -> list[Path]:
    """The shipped CAM figure (ten rows of image, CAM, Grad-CAM) as two columns of five rows,
    and the shipped deletion record's curves for CAM's orders (Grad-CAM's coincide with them)."""
    from PIL import Image

    from p6_classification.cam import curve_figure

    out.mkdir(parents=True, exist_ok=True)
    tall = Image.open(CHECKPOINTS / SHIPPED_RECORDS["cam/cam_resnet18.png"]).convert("RGB")
    half = tall.height // 2  # rows of equal height: the correct five, then the wrong five
    wide = Image.new("RGB", (2 * tall.width, half), "white")
    wide.paste(tall.crop((0, 0, tall.width, half)), (0, 0))
    wide.paste(tall.crop((0, half, tall.width, 2 * half)), (tall.width, 0))
    cams = out / "cam_two_columns.png"
    with atomic_path(cams) as tmp:
        wide.save(tmp, format="PNG")
    record = read_record(CHECKPOINTS / SHIPPED_RECORDS["cam/deletion_resnet18.json"])
    cam_only = {
        **record,
        **{
            m: {k: v for k, v in record[m].items() if "Grad-CAM" not in k}
            for m in ("deletion", "insertion")
        },
    }
    curves = out / "deletion_cam.png"
    curve_figure(cam_only, curves)
    return [cams, curves]


def _cams(d: Path) -> list[str]:
    lines = ["### Class activation maps", ""]
    figure = d / "cam_two_columns.png"
    command = f"{BENCH} --work {d} --parts cam --ship && {FIGURES_COMMAND.format(d=d)}"
    record = read_record(_find(d, "cam/deletion_resnet18.json"))
    if not figure.is_file():
        lines += _missing(command)
    else:
        lines += [
            "CAM (ours: the predicted class's FC weights times the last feature maps) beside the grad-cam "
            "library's Grad-CAM on layer4, for 5 correctly (left) and 5 wrongly (right) classified test images "
            "(official pixels); each image is titled with the predicted and the true class. The maps explain "
            "the plain model's prediction, without the test-time flip `infer.py` adds. On this GAP+FC network "
            "CAM and Grad-CAM coincide after ReLU and normalisation (tested on a small one).",
            "",
            f"![CAM and Grad-CAM]({figure.as_posix()})",
            "",
        ]
    if record is None or "paired_auc_gap" not in record:
        return lines + _missing(command)
    figure = d / "deletion_cam.png"
    lines += [
        f"Deletion and insertion curves (Petsiuk et al. 2018) on {record['images']} official-pixel test images, "
        f"{len(record['fractions'])} points each: the pixels set to the dataset mean (deletion) or restored into "
        "the all-mean image (insertion) in each map's order, most salient first, against three baselines: random "
        "pixels, *another* image's map (image i gets image i-1's: the same kind of blob, placed without regard to "
        "this image) and the map's own order reversed (least salient first). Area under the predicted class's "
        f"probability, mean ± 95% interval; deletion: lower is better, insertion: higher. `{record['command']}`.",
        "",
    ]
    lines += markdown_table(
        ["pixel order", "deletion area", "insertion area"],
        [
            [
                name,
                *(
                    f"{record[mode][name]['auc']:.3f} ± {record[mode][name]['auc_ci']:.3f}"
                    for mode in ("deletion", "insertion")
                ),
            ]
            for name in record["deletion"]
        ],
    )
    if figure.is_file():
        lines += [
            "",
            "The curves of CAM's orders (Grad-CAM's lie on them; their areas are in the table):",
            "",
            f"![deletion and insertion curves]({figure.as_posix()})",
        ]
    lines += [
        "",
        "Paired gaps of the areas, the map's minus the baseline's (mean ± 95% interval; n.s. where the "
        "interval holds 0):",
        "",
    ]

    def gap(mode: str, name: str, base: str, sign: int) -> str:
        mean, half = record["paired_auc_gap"][mode][name][base]
        verdict = (
            "n.s."
            if abs(mean) <= half
            else ("map better" if sign * mean > 0 else "baseline better")
        )
        return f"{mean:+.3f} ± {half:.3f} ({verdict})"

    lines += markdown_table(
        ["map", "baseline", "deletion (below 0: map better)", "insertion (above 0: map better)"],
        [
            [
                name,
                base.removeprefix(name + ", ") if base != "random" else base,
                gap("deletion", name, base, -1),
                gap("insertion", name, base, +1),
            ]
            for name, bases in record["paired_auc_gap"]["deletion"].items()
            for base in bases
        ],
    )
    return lines + [""]


def _vit(d: Path) -> list[str]:
    r = read_record(d / "vit" / "result.json")
    if r is None:
        return [
            "### ViT fine-tuning",
            "",
            f"_No ViT fine-tune in {d}/vit (no pretrained ViT weights can be had on the "
            "machines this repository was developed on): run `python -m p6_classification.vit_finetune --data DATA "
            f"--weights weights/vit_b16/model.safetensors --out {d}/vit` where they exist._",
            "",
        ]
    return [
        "### ViT fine-tuning",
        "",
        f"{r['preset']}, {r['epochs']} epochs: val acc {r['val_acc']:.4f}, test acc "
        f"{r['test_acc']:.4f} (final epoch), {r['train_seconds'] / 60:.1f} min training. {_measured(r, r['command'])}",
        "",
    ]


def section(runs_dir: str | Path) -> str:
    d = Path(runs_dir) / "p6"
    bench = read_record(_find(d, "bench.json")) or {}
    lines = [
        "## P6: CIFAR-10 classification: ResNet-18, augmentation, CAM, ViT fine-tuning",
        "",
        "ResNet-18 with a CIFAR stem (3x3 conv, no max-pool) or torchvision's (p6_classification/models.py), "
        "SGD with Nesterov momentum, linear warmup then cosine decay. Honest protocol: a tenth of the training "
        "images (5,000 of CIFAR-10's 50,000) are held out and all choices are made on them; the test set is "
        "evaluated once, after the last epoch, and that final-epoch accuracy is reported. The whole CIFAR-10 here "
        'is a lossy JPEG copy, so its numbers are quoted as "CIFAR-10 (JPEG copy)" beside the 1,017 test images '
        "with the official pixels.",
        "",
    ]
    with record_errors(_find(d, "bench.json")):
        lines += _throughput(bench, d) + _full(bench, d) + _tta(bench, d)
    for record, render in (("aug/aug_study.json", _aug), ("cam/deletion_resnet18.json", _cams)):
        with record_errors(_find(d, record)):
            lines += render(d)
    with record_errors(d / "vit" / "result.json"):
        lines += _vit(d)
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", default="report/runs/p6", help="RUNS_DIR/p6 for report/build.py")
    for path in make_figures(Path(p.parse_args(argv).out)):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
