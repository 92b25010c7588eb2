"""The report's P4 section, built only from files under RUNS_DIR/p4 that train.py,
p4_gan/figures.py and bench/p4_gan.py write. A missing input is named together with the
command that produces it; no number appears unless a file holds it."""
from __future__ import annotations

import json
from pathlib import Path

MODELS = {"dcgan": "(A) DCGAN", "improved": "(B) improved GAN"}
FID_WEIGHTS = "checkpoints/pt_inception-2015-12-05-6726825d.pth"


def _measured(path: Path, what: str, command: str) -> tuple[dict | None, str]:
    """(the JSON in `path`, a line citing the command and hardware behind it), or, when
    the file is missing or unreadable, (None, a line naming the command that writes it)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, f"_{what}: not produced yet. Run `{command}`._\n"
    where = f" on {info['hardware']}" if "hardware" in info else ""
    return info, f"_Measured with `{info.get('command', '?')}`{where}._\n"


def _eval_command(d: Path, model: str) -> str:
    out = f"{d}/out_{model}"
    return (f"bash p4_gan/run.sh {out} --checkpoint {d}/{model}/generator.pt && python bench/p4_gan.py eval "
            f"--images {out} --ref hw2_data/face/val --fid-weights {FID_WEIGHTS} --json {d}/eval_{model}.json")


def _results(d: Path) -> str:
    rows, found = ["| model | FID vs val | face rate | images |", "|---|---|---|---|"], {}
    notes = []
    for model, title in MODELS.items():
        info, note = _measured(d / f"eval_{model}.json", f"{title}: FID and face rate", _eval_command(d, model))
        notes.append(note)
        if info is not None:
            found[model] = info
            rows.append(f"| {title} | {info['fid']:.2f} | {100 * info['face_rate']:.1f}% | {info['total']} |")
    text = ("\n".join(rows) + "\n\n" if found else "") + "\n".join(notes)
    if len(found) == 2:
        a, b = found["dcgan"]["fid"], found["improved"]["fid"]
        verdict = "lower, so (B) is the model we ship" if b < a else "not lower: (B) did not pay off in this run"
        text += f"\nFID of (B) {b:.2f} against (A) {a:.2f}: {verdict}. Course baselines: FID < 27, face rate > 90%.\n"
    return text


def _figures(d: Path) -> str:
    parts = []
    for model, title in MODELS.items():
        run = d / model
        parts.append(f"#### {title}\n")
        arch = run / "architecture.txt"
        if arch.is_file():
            parts.append("```\n" + arch.read_text().strip() + "\n```\n")
        else:
            parts.append(f"_architecture: not produced yet. Run `python p4_gan/figures.py {d} --models {model}`._\n")
        for name, caption in (("first32.png", "the first 32 of run.sh's 1000 images"),
                              ("curves.png", "training curves (log.csv, fid.csv)")):
            if (run / name).is_file():
                parts.append(f"![{title}: {caption}]({(run / name).as_posix()})\n")
            else:
                parts.append(f"_{caption}: not produced yet. Run `python p4_gan/train.py --model {model} --out {run} "
                             f"&& python p4_gan/figures.py {d} --models {model}`._\n")
    return "\n".join(parts)


def _smoke(d: Path) -> str:
    command = ("OMP_NUM_THREADS=1 python bench/p4_gan.py smoke --data-root ../shared/data/hw2_data/face "
               f"--out /tmp/p4_smoke --json {d}/smoke.json")
    info, note = _measured(d / "smoke.json", "Short real run", command)
    if info is None:
        return note
    lines = [f"{info['epochs']} epochs of the {info['data']} train faces at batch {info['batch_size']}, "
             "full-size models; each cell is the mean over the first → last 20% of steps.", "",
             "| model | steps | s/step | D loss | G loss | D(real) logit | D(G(z)) logit | face rate |",
             "|---|---|---|---|---|---|---|---|"]
    for model, s in info["models"].items():
        trends = " | ".join(f"{s[k]['first_20pct']:.3f} → {s[k]['last_20pct']:.3f}" for k in ("d_loss", "g_loss", "d_real", "d_fake"))
        lines.append(f"| {model} | {s['steps']} | {s['seconds_per_step']:.2f} | {trends} | {s['one_face']}/{s['images']} |")
    return "\n".join(lines) + "\n\n" + note


def _real_faces(d: Path) -> str:
    command = f"python bench/p4_gan.py eval --images ../shared/data/hw2_data/face/train --json {d}/eval_real.json"
    info, note = _measured(d / "eval_real.json", "Face rate of real faces", command)
    if info is None:
        return note
    fid = f" FID against {info['ref']}: {info['fid']:.2f}." if "fid" in info else ""
    return (f"The face detector finds exactly one face in {info['one_face']} of {info['total']} real faces "
            f"({info['images']}).{fid}\n\n" + note)


def _cost(d: Path) -> str:
    info, note = _measured(d / "cost.json", "Cost", f"python bench/p4_gan.py cost --device cuda --json {d}/cost.json")
    if info is None:
        return note
    lines = [f"Batch {info['batch_size']}. GFLOP counted by PyTorch's FlopCounterMode; seconds measured.", "",
             "| model | GFLOP D step | GFLOP G step | s / iteration | hours for train.py's epochs (extrapolated) |",
             "|---|---|---|---|---|"]
    for model, c in info["models"].items():
        lines.append(f"| {model} | {c['gflop_d_step']:.0f} | {c['gflop_g_step']:.0f} | {c['seconds_per_iteration']:.3f} | "
                     f"{c['hours_for_default_epochs_extrapolated']:.2f} |")
    lines.append(f"\nrun.sh's 1000 images from a full-size generator: {info['infer_1000_seconds']:.1f} s "
                 "(course limit: 10 min).")
    return "\n".join(lines) + "\n\n" + note


def section(runs_dir: str | Path) -> str:
    """Markdown for P4, from RUNS_DIR/p4 (run folders, eval_*.json, smoke.json, cost.json)."""
    d = Path(runs_dir) / "p4"
    return "\n".join([
        "## P4: GANs for 64×64 faces, trained from scratch",
        "",
        "(A) is the DCGAN of Radford et al.: z of 100 dimensions, transposed convolutions with BN and ReLU, tanh "
        "output; D with stride-2 convolutions, LeakyReLU(0.2), BN (not on the first layer) and no pooling; "
        "non-saturating BCE loss, Adam(2e-4, β = 0.5, 0.999), batch 128. (B) keeps both architectures and changes "
        "the training: hinge loss with spectral normalisation on every D convolution instead of BN (D stays "
        "1-Lipschitz per layer without the cost of a gradient penalty), DiffAugment (colour, translation, cutout) "
        "on everything D sees, and an EMA of G's weights (decay 0.999) as the shipped generator. For both, the "
        "exported G uses BN statistics measured over 1024 samples, so an image depends only on its own z.",
        "",
        "### FID and face-recognition rate",
        "",
        _results(d),
        "### Architectures, samples, training curves",
        "",
        _figures(d),
        "### Short real run on this machine's faces",
        "",
        _smoke(d),
        "### Evaluation pipeline on real faces",
        "",
        _real_faces(d),
        "### Cost",
        "",
        _cost(d),
    ])
