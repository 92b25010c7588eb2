"""The report's P4 section and its figures, built only from files that train.py, bench/p4_gan.py
and this module write: the shipped record, logs and generator under p4_gan/checkpoints/, and
RUNS_DIR/p4/ (first32.png and first32_dcgan.png, {model}/architecture.txt, {model}/curves.png), which

    python -m p4_gan.report --out report/runs/p4     # seconds on a CPU, from the shipped files

writes. RUNS_DIR/p4/final.json, truncation.json and cost.json, where a bench wrote them, take the
place of the shipped records. A missing input is named together with the command that produces
it; no number appears unless a file holds it."""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
from pathlib import Path

from hw2_utils import (
    HelpFormatter,
    markdown_table,
    missing,
    read_record,
    record_errors,
    resolve_device,
    run_cli,
    save_grid,
)
from p4_gan.figures import plot_curves, write_architecture
from p4_gan.infer import SEED
from p4_gan.pipeline import generate, load_generator

MODELS = {"dcgan": "(A) DCGAN", "improved": "(B) improved GAN"}
# the shipped bench record and training logs
SHIPPED = Path(__file__).resolve().parent / "checkpoints"
# the GPU session's record holds bench.p4_gan cost on one H200
GPU_SESSION = SHIPPED.parents[1] / "bench" / "records" / "gpu_session_2026-12-04.json"
# Course baselines (DLCV 2022 HW2 P1) and the best student result we know of.
BASELINE_FID, BASELINE_FACE_RATE, BEST_STUDENT_FID = 27.0, 0.90, 22.97


def _missing(what: str, command: str) -> str:
    return missing(what, command) + "\n"


def _final_command(d: Path) -> str:
    return (
        f"python -m bench.p4_gan final --runs {d} --data ../shared/data/celeba10k --out {d}/final "
        f"--json {d}/final.json"
    )


def _results_path(d: Path, shipped: Path) -> Path:
    return d / "final.json" if (d / "final.json").is_file() else shipped / "p4_bench_final.json"


def _results(d: Path, shipped: Path) -> str:
    info = read_record(_results_path(d, shipped))
    if info is None:
        return _missing("FID and face rate", _final_command(d))
    real = info["real_train"]
    lines = [
        f"Each model's checkpoint was chosen by FID against the first 2,000 *training* faces (logged every few "
        f"epochs); the val faces were used for nothing but this table. {info['n']} images from run.sh's seed "
        f"({info['seed']}) against the {info['reference']}; face rate = share of images in which "
        f"evaluation/face_rate.py finds exactly one face. Feature spread = trace of the Inception feature "
        f"covariance over the val faces' (below 1: less varied than real faces).",
        "",
    ]
    rows = []
    for model, title in MODELS.items():
        m = info["models"].get(model)
        if m is None:
            continue
        chosen = (
            f"epoch {m['best_epoch']} (train-face FID {m['best_train_fid']:.1f})"
            if m["best_train_fid"]
            else "last"
        )
        if m.get("truncation"):
            chosen += f", z truncated to ±{m['truncation']:g}"
        rows.append(
            [
                title,
                f"{m['steps']} steps, {m['epochs']:.0f} epochs, "
                + (
                    f"{m['train_seconds'] / 3600:.1f} h"
                    if m["train_seconds"] >= 3600
                    else f"{m['train_seconds']:.0f} s"
                ),
                m.get("trained_on", "-"),
                chosen,
                f"{m['fid']:.2f}",
                f"{100 * m['face_rate']:.1f}%",
                f"{m['feature_spread']:.2f}",
            ]
        )
    rows.append(
        [
            f"{info['n']} real training faces (the floor this sample size sets)",
            "-",
            "-",
            "-",
            f"{real['fid']:.2f}",
            f"{100 * real['face_rate']:.1f}%",
            f"{real['feature_spread']:.2f}",
        ]
    )
    lines += markdown_table(
        [
            "model",
            "trained",
            "trained on",
            "chosen checkpoint",
            "FID vs val",
            "face rate",
            "feature spread",
        ],
        rows,
    )
    # an entry measured by another command (its measured_by) says so
    elsewhere = {
        model: m["measured_by"] for model, m in info["models"].items() if "measured_by" in m
    }
    lines += [
        "",
        f"_Measured with `{info['command']}` on {info['hardware']}"
        + "".join(
            f"; {MODELS[model]} with `{by['command']}` on {by['hardware']}"
            for model, by in elsewhere.items()
        )
        + "; training commands:_",
        "",
    ]
    lines += [
        f"- {MODELS[model]}: `{m['command']}`"
        + (f" ({m['command_note']})" if "command_note" in m else "")
        for model, m in info["models"].items()
    ]
    if {"dcgan", "improved"} <= info["models"].keys():
        a, b = info["models"]["dcgan"]["fid"], info["models"]["improved"]["fid"]
        verdict = (
            "lower: (B) is the shipped model"
            if b < a
            else "not lower: (B) did not pay off in this run"
        )
        best = info["models"]["improved" if b < a else "dcgan"]
        lines += [
            "",
            f"FID of (B) {b:.2f} against (A) {a:.2f}: {verdict}. Course baselines: FID < {BASELINE_FID:g} "
            f"({'met' if best['fid'] < BASELINE_FID else 'not met'}) and face rate > {BASELINE_FACE_RATE:.0%} "
            f"({'met' if best['face_rate'] > BASELINE_FACE_RATE else 'not met'}); the best student FID we know "
            f"of is {BEST_STUDENT_FID} with the course's 38,464 faces on a GPU. The floor row is what 1,000 real "
            "faces score: no generator can be expected below it at this sample size.",
        ]
    return "\n".join(lines) + "\n"


# run folder -> (title, shipped log prefix): every run whose log ships, for the curves
CURVES = {
    "dcgan": ("(A) DCGAN, CPU", "dcgan"),
    "improved": ("(B) improved GAN, shipped (GPU)", "improved"),
    "improved_cpu": ("(B), the earlier CPU run", "improved_cpu"),
    "resnet32_cpu": ("(B)'s recipe with SNGAN's ResNet networks, CPU", "resnet32_cpu"),
}
FIGURES_COMMAND = "python -m p4_gan.report --out {d}"


# the first 32 of run.sh's images of each shipped generator: (B) is run.sh's, (A) its --checkpoint
FIRST32 = {"improved": ("p4_gan.pt", "first32.png"), "dcgan": ("dcgan.pt", "first32_dcgan.png")}


def make_figures(out: Path, device, shipped: Path = SHIPPED) -> list[Path]:
    """first32.png and first32_dcgan.png from the shipped generators (run.sh's seed, so run.sh's
    first 32 images), each model's printed networks and every shipped log's curves."""
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for file, figure in FIRST32.values():
        generator, _ = load_generator(shipped / file, device)
        written.append(out / figure)
        save_grid(generate(generator, 1000, SEED)[:32], written[-1], nrow=8)
    for model in MODELS:
        (out / model).mkdir(parents=True, exist_ok=True)
        written.append(write_architecture(out / model, model))
    for name, (_, prefix) in CURVES.items():
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / name  # plot_curves reads a run folder's log.csv and fid.csv
            run.mkdir()
            shutil.copy(shipped / f"{prefix}_train_log.csv", run / "log.csv")
            shutil.copy(shipped / f"{prefix}_fid_train_faces.csv", run / "fid.csv")
            (out / name).mkdir(parents=True, exist_ok=True)
            written.append(out / name / "curves.png")
            shutil.copy(plot_curves(run), written[-1])
    return written


def _figures(d: Path) -> str:
    command = FIGURES_COMMAND.format(d=d)
    parts = []
    parts.append(
        f"The first 32 of run.sh's 1,000 images (seed {SEED}, so the files 0000.png-0031.png) from "
        "each shipped generator: (B) `p4_gan.pt`, what run.sh loads, and (A) `dcgan.pt` "
        "(`bash p4_gan/run.sh OUT --checkpoint p4_gan/checkpoints/dcgan.pt`).\n"
    )
    for model, (file, figure) in FIRST32.items():
        first32 = d / figure
        if first32.is_file():
            parts.append(
                f"{MODELS[model]}:\n\n![first 32 images of {file}]({first32.as_posix()})\n"
            )
        else:
            parts.append(_missing(f"the first 32 images of {file}", command))
    for model, title in MODELS.items():
        arch = d / model / "architecture.txt"
        parts.append(f"#### {title}: networks\n")
        if arch.is_file():
            parts.append("```\n" + arch.read_text().strip() + "\n```\n")
        else:
            parts.append(_missing("architecture", command))
    parts.append("#### Training curves (losses, mean D logits, FID on training faces)\n")
    for name, (title, _) in CURVES.items():
        curves = d / name / "curves.png"
        if curves.is_file():
            parts.append(f"{title}:\n\n![{title}: training curves]({curves.as_posix()})\n")
        else:
            parts.append(_missing(f"{title}: training curves", command))
    return "\n".join(parts)


def _read_csv(path: Path) -> list[dict]:
    try:
        with path.open() as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _last_epoch_means(log: list[dict]) -> dict:
    """Mean D loss and D outputs over the last epoch of a run's log.csv."""
    last = max(float(r["epoch"]) for r in log)
    rows = [r for r in log if float(r["epoch"]) > last - 1]
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in ("d_loss", "d_real", "d_fake")}


def _lessons(d: Path, shipped: Path) -> str:
    """What the logs say about the D/G balance, read from each run's log.csv and fid.csv."""
    lines = []
    for model, title, reading in [
        (
            "dcgan",
            MODELS["dcgan"],
            "BCE on logits: the BN discriminator wins throughout (it separates real from "
            "fake by several logits), and G still learns because its non-saturating loss "
            "keeps a gradient when D is confident.",
        ),
        (
            "improved",
            MODELS["improved"],
            "hinge loss, where 2 is chance: D stays only just ahead of G, which is the "
            "balance spectral normalisation aims for.",
        ),
        (
            "improved_try1",
            "(B), first recipe, stopped",
            "Adam β₁ 0.5 and one D step per G step: the spectrally "
            "normalised D sat at chance (D(real) ≈ D(fake)) and G "
            "collapsed to a few blurred faces, so the run was stopped and "
            "replaced by β = (0, 0.9) with two D steps per G step.",
        ),
    ]:
        log = _read_csv(d / model / "log.csv") or _read_csv(shipped / f"{model}_train_log.csv")
        fid = _read_csv(d / model / "fid.csv") or _read_csv(
            shipped / f"{model}_fid_train_faces.csv"
        )
        if not log:
            continue
        m = _last_epoch_means(log)
        trajectory = " → ".join(
            f"{float(r['fid']):.0f} (epoch {float(r['epoch']):.0f})" for r in fid
        )
        lines.append(
            f"- {title}: last epoch D loss {m['d_loss']:.2f}, D(real) {m['d_real']:+.2f}, "
            f"D(fake) {m['d_fake']:+.2f}; {reading} Train-face FID: {trajectory or 'not logged'}."
        )
    if not lines:
        return _missing("training logs", "python -m p4_gan.train --preset improved ...")
    lines += [
        "",
        "(A)'s samples swing between evaluations before settling, (B)'s FID falls smoothly; "
        "the EMA generator's faces have a smaller feature spread than (A)'s (the record's table), i.e. it "
        "concentrates on the common faces. (A)'s FID was still falling when its 40 CPU epochs ended, and (B)'s "
        "when the GPU session stopped it after 96: both far above the real-face floor, so a longer run is "
        "the first thing to try.",
    ]
    return "\n".join(lines) + "\n"


# Networks compared at equal steps: the two CPU runs of (B)'s recipe (run folder, the shipped copy's
# prefix, what changed). Both: batch 64, 5,000 steps, train-face FID on 500 images every 5 epochs.
NETWORK_RUNS = {
    "improved_cpu": (
        "DCGAN-shaped (as shipped)",
        "python -m p4_gan.train --preset improved --data ../shared/data/celeba10k --out runs/p4/improved_cpu "
        "--batch-size 64 --epochs 40 --precision bf16 --fid-every 5 --fid-n 500 --ckpt-every 500 --beta1 0 "
        "--beta2 0.9 --d-steps 2",
    ),
    "resnet32_cpu": (
        "SNGAN's ResNet (`--model resnet`, 32 channels)",
        "python -m p4_gan.train --preset improved --model resnet --g-channels 32 --d-channels 32 --data "
        "../shared/data/celeba10k --out runs/p4/resnet32_cpu --batch-size 64 --epochs 40 --precision bf16 "
        "--fid-every 5 --fid-n 500 --ckpt-every 500 --beta1 0 --beta2 0.9 --d-steps 2",
    ),
}


def _networks(d: Path, shipped: Path) -> str:
    curves = {
        name: {
            int(float(r["epoch"])): float(r["fid"])
            for r in _read_csv(d / name / "fid.csv")
            or _read_csv(shipped / f"{name}_fid_train_faces.csv")
        }
        for name in NETWORK_RUNS
    }
    if not all(curves.values()):
        name = next(n for n, c in curves.items() if not c)
        return _missing(f"The {name} run's FID curve", NETWORK_RUNS[name][1])
    epochs = sorted(set().union(*curves.values()))
    lines = [
        "(B)'s recipe with each pair of networks, on the CPU (an AMD EPYC with bf16 units), the same seed, "
        "batch and steps: FID of 500 samples against the first 2,000 *training* faces, as train.py logs it "
        "(the DCGAN-shaped curve is the earlier CPU run's log, commit b777d74, not run again). Commands: "
        + "; ".join(f"`{command}`" for _, command in NETWORK_RUNS.values())
        + ".",
        "",
    ]
    lines += markdown_table(
        ["epoch", *(title for title, _ in NETWORK_RUNS.values())],
        [[str(e), *(f"{c[e]:.1f}" if e in c else "–" for c in curves.values())] for e in epochs],
    )
    return "\n".join(lines) + "\n"


def _truncation_path(d: Path, shipped: Path) -> Path:
    return (
        d / "truncation.json"
        if (d / "truncation.json").is_file()
        else shipped / "p4_truncation.json"
    )


def _truncation(d: Path, shipped: Path) -> str:
    info = read_record(_truncation_path(d, shipped))
    if info is None:
        return _missing(
            "Truncation study",
            "python -m bench.p4_gan truncation p4_gan/checkpoints/p4_gan.pt "
            f"--data ../shared/data/celeba10k --json {d}/truncation.json",
        )
    rows = [
        [
            "none" if row["truncation"] is None else f"{row['truncation']:g}",
            f"{row['train_fid']:.2f}",
            f"{100 * row['face_rate']:.1f}%",
            f"{row['feature_spread']:.2f}",
        ]
        + (["**chosen**"] if row["truncation"] == info["chosen"] else [""])
        for row in info["rows"]
    ]
    lines = [
        f"run.sh's {info['n']} images (seed {info['seed']}) from `{info['generator']}` with z drawn "
        "from the normal truncated to [-T, T] (BigGAN's trick: entries outside are drawn again), "
        f"against the first {info['fid_ref_n']} *training* faces, the reference that selects "
        "checkpoints; the lowest FID is chosen and written into the generator file, which run.sh "
        "then samples with (val faces are not read here; the FID table above is measured after).",
        "",
    ]
    lines += markdown_table(["T", "train-face FID", "face rate", "feature spread", ""], rows)
    lines += [
        "",
        "No truncation scored best, so the generator samples z from N(0, I)."
        if info["chosen"] is None
        else f"The generator samples z truncated to ±{info['chosen']:g}.",
    ]
    return "\n".join(lines) + f"\n\n_Measured with `{info['command']}` on {info['hardware']}._\n"


def _cost(d: Path, session_record: Path) -> str:
    info = read_record(d / "cost.json")
    if info is None:
        session = read_record(session_record)
        info = session and session["timing_records"].get("p4_cost")
    if info is None:
        return _missing("Cost", f"python -m bench.p4_gan cost --device cuda --json {d}/cost.json")
    lines = [
        f"Batch {info['batch_size']}. GFLOP counted by PyTorch's FlopCounterMode; seconds measured.",
        "",
    ]
    lines += markdown_table(
        [
            "model",
            "GFLOP D step",
            "GFLOP G step",
            "s / iteration",
            "hours for train.py's epochs (extrapolated)",
        ],
        [
            [
                model,
                f"{c['gflop_d_step']:.0f}",
                f"{c['gflop_g_step']:.0f}",
                f"{c['seconds_per_iteration']:.3f}",
                f"{c['hours_for_default_epochs_extrapolated']:.2f}",
            ]
            for model, c in info["models"].items()
        ],
    )
    lines.append(
        f"\nrun.sh's 1000 images from a full-size generator: {info['infer_1000_seconds']:.1f} s "
        "(course limit: 10 min)."
    )
    return "\n".join(lines) + f"\n\n_Measured with `{info['command']}` on {info['hardware']}._\n"


def section(runs_dir: str | Path, shipped: Path = SHIPPED, session: Path = GPU_SESSION) -> str:
    """Markdown for P4, from RUNS_DIR/p4, else from the shipped record and logs."""
    d = Path(runs_dir) / "p4"
    with record_errors(_results_path(d, shipped)):
        results = _results(d, shipped)
    with record_errors(d / "cost.json"):
        cost = _cost(d, session)
    with record_errors(_truncation_path(d, shipped)):
        truncation = _truncation(d, shipped)
    return "\n".join(
        [
            "## P4: GANs for 64×64 faces, trained from scratch",
            "",
            "(A) is the DCGAN of Radford et al.: z of 100 dimensions, transposed convolutions with BN and ReLU, tanh "
            "output; D with stride-2 convolutions, LeakyReLU(0.2), BN (not on the first layer) and no pooling; "
            "non-saturating BCE loss, Adam(2e-4, β = 0.5, 0.999). (B) keeps both architectures and changes the "
            "training: hinge loss with spectral normalisation on every D convolution instead of BN (D stays "
            "1-Lipschitz per layer without the cost of a gradient penalty), DiffAugment (colour, translation, cutout) "
            "on everything D sees, so that D cannot memorise a small training set, and an EMA of G's weights (decay "
            "0.999) as the shipped generator. For both, the exported G uses BN statistics measured over 1024 samples, "
            "so an image depends only on its own z. (B) as shipped also uses Adam β = (0, 0.9) and two D steps per "
            "G step (see below for why).",
            "",
            "### FID and face-recognition rate",
            "",
            results,
            "### Samples, architectures, training curves",
            "",
            _figures(d),
            "### What the runs showed",
            "",
            _lessons(d, shipped),
            "### Networks at equal steps",
            "",
            _networks(d, shipped),
            "### Truncation of z",
            "",
            truncation,
            "### Cost",
            "",
            cost,
        ]
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", default="report/runs/p4", help="RUNS_DIR/p4 for report/build.py")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    args = p.parse_args(argv)
    for path in make_figures(Path(args.out), resolve_device(args.device)):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
