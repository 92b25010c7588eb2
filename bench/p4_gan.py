r"""P4 benchmarks. They only measure: each command reads generators or run folders, prints its
numbers and, with --json, saves them together with the command and the hardware;
p4_gan/report.py reads those files. Choosing among a run's snapshots is p4_gan/select_snapshot.py.

    # the result: for each run folder (RUNS/dcgan, RUNS/improved: train.py's, or the one
    # p4_gan/select_snapshot.py writes) its model.pt writes run.sh's 1000 images; their FID
    # against the 2000 val faces and face rate, beside the floor: 1000 real *training* faces
    # against the same val faces
    python -m bench.p4_gan final --runs runs/p4 --data ../shared/data/celeba10k --out outputs/p4/final \
        --json outputs/p4/final.json

    # a short real run of both models on the 24 train faces (CPU, one thread): loss trends,
    # seconds per step, and the face rate of 100 images from each result
    OMP_NUM_THREADS=1 python -m bench.p4_gan smoke --data ../shared/data/hw2_data/face --out /tmp/p4_smoke \
        --json runs/p4/smoke.json
    # FID against val and the face-recognition rate of a folder (run.sh's output, or real faces
    # to check the evaluation pipeline; FID needs --ref and pytorch-fid's Inception weights)
    python -m bench.p4_gan eval --gen OUT --ref hw2_data/face/val \
        --fid-weights checkpoints/pt_inception-2015-12-05-6726825d.pth --json runs/p4/eval_improved.json
    # run.sh's 1000 images of one generator at each truncation of z: FID on the first 2000 training
    # faces and face rate; the lowest FID is the choice, made infer.py's TRUNCATION by hand
    python -m bench.p4_gan truncation p4_gan/checkpoints/p4_gan.pt --data ../shared/data/celeba10k \
        --json outputs/p4/truncation.json
    # FLOPs per training step (counted on meta tensors), seconds per step at batch 128 on DEVICE,
    # and seconds for run.sh's 1000 images from a full-size generator (random weights cost the same)
    python -m bench.p4_gan cost --device cuda --json runs/p4/cost.json
    # training images per second of the plain step and of --fast-step (CUDA graphs) on DEVICE,
    # --preset shipped's networks and recipe at each batch size (random faces: speed only)
    python -m bench.p4_gan speed --device cuda --batch-sizes 64 128 --json runs/p4/speed.json
    # what resuming without Adam's moments (--no-optimizer-state, the state a GPU call carries)
    # costs: --preset long's recipe, narrower, trained straight with two seeds and once resumed
    # every --every epochs from a last.pt without optimizer state; train-face FID curves side by side
    python -m bench.p4_gan resume-cost --data ../shared/data/celeba10k --work runs/p4/resume_cost \
        --json p4_gan/checkpoints/p4_resume_cost.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from evaluation.face_rate import face_rate
from evaluation.fid import fid_from_dirs, frechet_distance, image_statistics, load_inception
from hw2_utils import (
    CLIError,
    HelpFormatter,
    atomic_path,
    command_line,
    describe_hardware,
    ensure_writable_dir,
    positive_float,
    positive_int,
    require_file,
    resolve_device,
    run_cli,
    seed_int,
    to_uint8,
)
from p4_gan import infer, train
from p4_gan.data import load_faces, split_source
from p4_gan.fast_step import FastSteps
from p4_gan.figures import plot_curves, series
from p4_gan.select_snapshot import training_face_reference
from p4_gan.pipeline import (
    generate,
    load_generator,
    save_generator,
    with_standing_stats,
    write_images,
)

MODELS = ("dcgan", "improved")  # train.py --preset, the two models
COURSE_TRAIN_FACES = 38_464  # hw2_data/face/train in the course data


def trainer_for(model: str, device: torch.device, batch_size: int):
    """A full-size trainer of `model` with train.py's defaults."""
    args = train.parse_args(["--preset", model, "--batch-size", str(batch_size)])
    return train.build_trainer(args, device, torch.float32, rank=0)


def window_means(path: Path, key: str, fraction: float = 0.2) -> tuple[float, float]:
    """Mean of `key` over the first and over the last `fraction` of log rows."""
    _, values = series(path, "step", key)
    k = max(1, round(len(values) * fraction))
    return sum(values[:k]) / k, sum(values[-k:]) / k


def cmd_smoke(args) -> dict:
    torch.manual_seed(args.seed)
    result = {
        "hardware": describe_hardware(torch.device("cpu")),
        "data": str(args.data),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "models": {},
    }
    for model in args.models:
        run = Path(args.out) / model
        train.main(
            [
                "--preset",
                model,
                "--data",
                str(args.data),
                "--out",
                str(run),
                "--no-resume",
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--seed",
                str(args.seed),
                "--fid-every",
                "0",
                "--sample-every",
                "0",
                "--ckpt-every",
                str(10**9),
                "--log-every",
                "1",
                "--device",
                "cpu",
            ]
        )
        log = run / "log.csv"
        steps, seconds = series(log, "step", "seconds")
        summary = {"steps": int(steps[-1]), "seconds_per_step": seconds[-1] / steps[-1]}
        for key in ("d_loss", "g_loss", "d_real", "d_fake"):
            first, last = window_means(log, key)
            summary[key] = {"first_20pct": first, "last_20pct": last}
        summary["all_finite"] = all(
            math.isfinite(v) for key in ("d_loss", "g_loss") for v in series(log, "step", key)[1]
        )
        generator, _ = load_generator(run / "model.pt")
        samples = ensure_writable_dir(run / f"samples_{args.n}")
        write_images(generate(generator, args.n, infer.SEED), samples)
        rate = face_rate(samples)
        summary.update(
            face_rate=rate["rate"],
            one_face=rate["one_face"],
            images=rate["total"],
            curves=str(plot_curves(run)),
            grid=str(run / "samples" / f"epoch{args.epochs:04d}.png"),
        )
        result["models"][model] = summary
        print(f"{model}: {json.dumps(summary, indent=2)}")
    return result


def cmd_eval(args) -> dict:
    result = {"images": str(args.gen)}
    rate = face_rate(args.gen)
    result.update(face_rate=rate["rate"], one_face=rate["one_face"], total=rate["total"])
    print(f"face rate: {100 * rate['rate']:.2f}% ({rate['one_face']}/{rate['total']})")
    if args.ref:
        device = resolve_device(args.device)
        result.update(
            ref=str(args.ref),
            fid=fid_from_dirs(args.gen, args.ref, args.fid_weights, device=str(device)),
            hardware=describe_hardware(device),
        )
        print(f"FID vs {args.ref}: {result['fid']:.3f}")
    return result


def training_record(run: Path) -> dict:
    """What the run folder says about its training: steps, epochs, wall time, and the epoch
    and training-face FID of its model.pt (a select_snapshot folder's choice, or a train.py
    run's last export)."""
    steps, seconds = series(run / "log.csv", "step", "seconds")
    epochs, fids = (
        series(run / "fid.csv", "epoch", "fid") if (run / "fid.csv").is_file() else ([], [])
    )
    _, meta = load_generator(run / "model.pt")
    # log.csv's clock restarts with each process (a resumed run): add up the segments.
    total = (
        sum(before for before, after in zip(seconds, seconds[1:]) if after < before) + seconds[-1]
    )
    return {
        "steps": int(steps[-1]),
        "epochs": steps[-1] / (meta["step"] / meta["epoch"]) if meta.get("epoch") else None,
        "train_seconds": total,
        "command": meta.get("recipe"),
        "best_step": meta.get("step"),
        "best_epoch": meta.get("epoch"),
        # model.pt's own training-face FID, where measured (the choice of select_snapshot)
        "best_train_fid": dict(zip(epochs, fids)).get(meta.get("epoch")),
        "fid_curve": list(zip(epochs, fids)),
    }


def spread(stats: tuple, reference: tuple) -> float:
    """trace(Sigma) / trace(Sigma_ref) of Inception features: how varied a set is next to the real
    faces; a generator that collapses onto few modes scores well below 1."""
    return float(stats[1].trace() / reference[1].trace())


def score(images: torch.Tensor, folder: Path, extractor, reference: tuple, device) -> dict:
    """FID against `reference`, feature spread and face rate of generated images in [-1, 1],
    written to `folder` as run.sh writes them (the face detector reads the PNGs)."""
    write_images(images, folder)
    rate = face_rate(folder)
    stats = image_statistics(to_uint8(images).permute(0, 3, 1, 2), extractor, device=device)
    return {
        "fid": frechet_distance(stats, reference),
        "feature_spread": spread(stats, reference),
        "face_rate": rate["rate"],
        "one_face": rate["one_face"],
        "total": rate["total"],
    }


def cmd_final(args) -> dict:
    device = resolve_device(args.device)
    extractor = load_inception(args.fid_weights, device)
    val = load_faces(split_source(args.data, "val"))
    reference = image_statistics(val, extractor, device=device)
    real = load_faces(split_source(args.data, "train"), limit=args.n)
    out = Path(args.out)
    write_images(real.float() / 127.5 - 1, out / "real_train")  # exact: the uint8 pixels come back
    rate = face_rate(out / "real_train")
    result = {
        "hardware": describe_hardware(device),
        "data": str(args.data),
        "n": args.n,
        "reference": f"{len(val)} val faces",
        "seed": infer.SEED,
        "real_train": {
            "fid": frechet_distance(
                real_stats := image_statistics(real, extractor, device=device), reference
            ),
            "feature_spread": spread(real_stats, reference),
            "face_rate": rate["rate"],
            "one_face": rate["one_face"],
            "total": rate["total"],
        },
        "models": {},
    }
    print(
        f"floor, {args.n} real training faces: FID {result['real_train']['fid']:.2f}, face rate {rate['rate']:.3f}"
    )
    for model in args.models:
        run = Path(args.runs) / model
        generator, _ = load_generator(
            require_file(
                run / "model.pt",
                f"{model} generator",
                f"train it: python -m p4_gan.train --preset {model} --out {run}",
            ),
            device,
        )
        # what run.sh writes: its seed and truncation
        images = generate(generator, args.n, infer.SEED, truncation=infer.TRUNCATION)
        scores = score(images, out / model, extractor, reference, device)
        result["models"][model] = {
            **training_record(run),
            **scores,
            "truncation": infer.TRUNCATION,
            "images": str(out / model),
        }
        print(
            f"{model}: FID {scores['fid']:.2f} against {len(val)} val faces, "
            f"face rate {scores['face_rate']:.3f}"
        )
    return result


def cmd_cost(args) -> dict:
    device = resolve_device(args.device)
    result = {"hardware": describe_hardware(device), "batch_size": args.batch_size, "models": {}}
    real = (
        torch.rand(args.batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )
    for model in MODELS:
        # shapes only: counts cost no compute
        meta = trainer_for(model, torch.device("meta"), args.batch_size)
        with FlopCounterMode(display=False) as d_count:
            meta.d_step(real.to("meta"))
        with FlopCounterMode(display=False) as g_count:
            meta.g_step(args.batch_size)
        trainer = trainer_for(model, device, args.batch_size)
        times = []
        # the first iteration warms up (cuDNN autotuning, allocations)
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            trainer.d_step(real.to(device))
            trainer.g_step(args.batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        per_step = sum(times[1:]) / args.repeats
        result["models"][model] = {
            "gflop_d_step": d_count.get_total_flops() / 1e9,
            "gflop_g_step": g_count.get_total_flops() / 1e9,
            "seconds_per_iteration": per_step,
            "hours_for_default_epochs_extrapolated": per_step
            * (COURSE_TRAIN_FACES // args.batch_size)
            * train.DEFAULTS["epochs"]
            / 3600,
        }
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_generator(
            Path(tmp) / "g.pt",
            with_standing_stats(trainer_for("dcgan", torch.device("cpu"), 1).G),
            {},
        )
        start = time.perf_counter()
        infer.main(
            [
                str(Path(tmp) / "out"),
                "--checkpoint",
                str(Path(tmp) / "g.pt"),
                "--device",
                str(device),
            ]
        )
        result["infer_1000_seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=2))
    return result


def time_steps(preset: str, batch_size: int, fast: bool, faces, device, dtype, args) -> dict:
    """D steps per second of train.py's step (or --fast-step's) over args.seconds, after
    args.warmup untimed steps (where the fast step warms up and captures its graphs)."""
    targs = train.parse_args(
        ["--preset", preset, "--batch-size", str(batch_size)] + ["--fast-step"] * fast
    )
    trainer = train.build_trainer(targs, device, dtype, rank=0)
    runner = FastSteps(trainer, faces, batch_size, targs.d_steps) if fast else None
    order = torch.randperm(len(faces), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda *_: None
    k, start = 0, None
    while start is None or time.perf_counter() - start < args.seconds:
        k += 1
        indices = order[(k * batch_size) % (len(faces) - batch_size) :][:batch_size]
        if runner is not None:
            runner(indices, k)
        else:
            train.train_step(trainer, faces, indices, k, targs.d_steps)
        if k == args.warmup:
            sync(device)
            start = time.perf_counter()
        elif k % 50 == 0:
            sync(device)  # the window ends on finished work, and the queue stays short
    sync(device)
    seconds, steps = time.perf_counter() - start, k - args.warmup
    return {
        "d_steps_per_second": steps / seconds,
        "real_images_per_second": steps * batch_size / seconds,
        "steps": steps,
    }


# bf16, 12 steps, cuDNN deterministic: the captured and the eager step run the same kernels, so
# any gap beyond rounding is a wrong replay (a false alarm only costs the fast step)
REPLAY_TOLERANCE = dict(rtol=1e-2, atol=1e-4)


def replay_check(device, steps: int = 12) -> dict:
    """The fast step captured (on a GPU) against the same step run eagerly, from one seed, in
    bf16 as the jobs train, on small networks with LeCam and a falling learning rate: per
    step equal D losses, at the end equal weights (within REPLAY_TOLERANCE) and the same random
    state (each replay drew what the eager step drew). A wrong replay fails here, in seconds,
    instead of training a bad run for several calls."""
    targs = train.parse_args(
        ["--preset", "long", "--batch-size", "32", "--fast-step"]
        + ["--g-channels", "8", "--d-channels", "8", "--lecam-weight", "0.1"]
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    faces = torch.randint(0, 256, (256, 3, 64, 64), generator=torch.Generator().manual_seed(1))
    faces = faces.to(torch.uint8).to(device)
    trainers = [train.build_trainer(targs, device, dtype, rank=0) for _ in range(2)]
    captured, eager = (FastSteps(t, faces, 32, targs.d_steps) for t in trainers)
    eager.capture = False
    order = torch.randperm(len(faces), generator=torch.Generator().manual_seed(2)).to(device)
    losses = []
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        for k in range(1, steps + 1):
            indices = order[(k * 32) % 224 :][:32]
            for trainer in trainers:
                trainer.set_lr_scale(1 - k / (steps + 1))
            # read before the next replay overwrites the graph's outputs
            losses.append(
                (float(captured(indices, k)["d_loss"]), float(eager(indices, k)["d_loss"]))
            )
    finally:
        torch.backends.cudnn.deterministic = deterministic
    pairs = [
        (a, b)
        for x, y in zip(*[(t.G, t.D, t.ema) for t in trainers])
        for a, b in zip(x.state_dict().values(), y.state_dict().values())
        if a.is_floating_point()
    ]
    check = {
        "graphs": len(captured.graphs),  # 2 on a GPU (D and G), 0 on the CPU
        "max_weight_gap": max((a.float() - b.float()).abs().max().item() for a, b in pairs),
        "weights_equal": all(torch.allclose(a, b, **REPLAY_TOLERANCE) for a, b in pairs),
        "losses_equal": all(
            torch.isclose(torch.tensor(a), torch.tensor(b), **REPLAY_TOLERANCE) for a, b in losses
        ),
        "random_state_equal": torch.equal(*(t.noise.get_state() for t in trainers)),
    }
    captures = device.type != "cuda" or check["graphs"] == 2
    check["ok"] = (
        captures
        and check["weights_equal"]
        and check["losses_equal"]
        and check["random_state_equal"]
    )
    return check


def cmd_speed(args) -> dict:
    device = resolve_device(args.device)
    check = replay_check(device)
    print(f"replay check: {check}")
    if not check["ok"]:
        raise CLIError(f"the fast step's replay differs from the eager step: {check}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    faces = torch.randint(0, 256, (4096, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    faces = faces.to(torch.uint8).to(device)
    result = {
        "hardware": describe_hardware(device),
        "dtype": str(dtype),
        "preset": args.preset,
        "replay_check": check,
    }
    for batch_size in args.batch_sizes:
        for fast in (False, True):
            name = f"batch{batch_size}_{'fast' if fast else 'plain'}"
            result[name] = time_steps(args.preset, batch_size, fast, faces, device, dtype, args)
            print(
                f"{name}: {result[name]['d_steps_per_second']:.1f} D steps/s, "
                f"{result[name]['real_images_per_second']:.0f} images/s"
            )
        plain, fast = (result[f"batch{batch_size}_{m}"] for m in ("plain", "fast"))
        result[f"batch{batch_size}_speedup"] = (
            fast["real_images_per_second"] / plain["real_images_per_second"]
        )
    return result


def cmd_resume_cost(args) -> dict:
    base = ["--preset", "long", "--data", str(args.data), "--device", "cpu", "--no-optimizer-state"]
    base += ["--g-channels", str(args.g_channels), "--d-channels", str(args.d_channels)]
    base += [
        "--batch-size",
        str(args.batch_size),
        "--lr-decay-start",
        "1",
        "--fid-every",
        str(args.every),
    ]
    base += ["--fid-n", str(args.fid_n), "--sample-every", "0", "--snapshot-every", "0"]
    base += ["--ckpt-every", str(10**9), "--precision", args.precision]
    runs = {"straight_seed0": (0, False), "straight_seed1": (1, False), "resumed_seed0": (0, True)}
    result = {"hardware": describe_hardware(torch.device("cpu")), "recipe": base, "runs": {}}
    for name, (seed, resumed) in runs.items():
        out = Path(args.work) / name
        first = Path(args.work) / next(iter(runs)) / "fid_ref.npz"
        if name != next(iter(runs)) and first.is_file() and not (out / "fid_ref.npz").exists():
            out.mkdir(parents=True, exist_ok=True)  # the same 2,000 faces: computed once
            shutil.copy2(first, out / "fid_ref.npz")
        stops = range(args.every, args.epochs + 1, args.every) if resumed else [args.epochs]
        for epochs in stops:  # each session ends at its last epoch; the next starts Adam afresh
            train.main([*base, "--out", str(out), "--seed", str(seed), "--epochs", str(epochs)])
        epochs, fids = series(out / "fid.csv", "epoch", "fid")
        record = json.loads((out / "result.json").read_text())
        result["runs"][name] = {
            "fid_train_faces": dict(zip(map(int, epochs), fids)),
            "sessions": len(record["sessions"]),
            "seconds": record["seconds"],
        }
        print(f"{name}: FID {dict(zip(map(int, epochs), fids))}")
    fid = {name: run["fid_train_faces"][args.epochs] for name, run in result["runs"].items()}
    result["final"] = {
        **fid,
        "seed_spread": abs(fid["straight_seed0"] - fid["straight_seed1"]),
        "resume_gap": fid["resumed_seed0"] - fid["straight_seed0"],
    }
    print(json.dumps(result["final"], indent=2))
    return result


def cmd_truncation(args) -> dict:
    """Run.sh's 1000 images of one generator at each truncation of z (and without): FID against
    the training faces that select_snapshot uses, face rate and feature spread. The lowest FID is
    the choice (val faces are never read), which infer.py's TRUNCATION states by hand."""
    device = resolve_device(args.device)
    extractor, n_faces, reference = training_face_reference(
        args.data, args.fid_ref_n, args.fid_weights, device
    )
    generator, _ = load_generator(args.generator, device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threshold in [None, *sorted(set(args.thresholds), reverse=True)]:
            images = generate(generator, args.n, infer.SEED, truncation=threshold)
            scores = score(images, Path(tmp) / "images", extractor, reference, device)
            rows.append({"truncation": threshold, "train_fid": scores.pop("fid"), **scores})
            print(
                f"truncation {threshold or 'none'}: FID {rows[-1]['train_fid']:.2f} on "
                f"{n_faces} training faces, face rate {scores['face_rate']:.3f}",
                flush=True,
            )
    chosen = min(rows, key=lambda row: row["train_fid"])["truncation"]
    print(f"chosen by training-face FID: {chosen or 'no truncation'}")
    return {
        "hardware": describe_hardware(device),
        "generator": str(args.generator),
        "data": str(args.data),
        "fid_ref_n": n_faces,
        "n": args.n,
        "seed": infer.SEED,
        "rows": rows,
        "chosen": chosen,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "smoke", help="short real training of both models on CPU, with loss trends and face rate"
    )
    s.add_argument(
        "--data", required=True, help="folder with train/ (e.g. ../shared/data/hw2_data/face)"
    )
    s.add_argument("--out", required=True, help="run folders OUT/dcgan and OUT/improved (replaced)")
    s.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    s.add_argument("--epochs", type=positive_int, default=40)
    s.add_argument("--batch-size", type=positive_int, default=12)
    s.add_argument("--n", type=positive_int, default=100, help="images generated for the face rate")
    s.add_argument("--seed", type=seed_int, default=0)
    s = sub.add_parser("eval", help="face rate (and FID with --ref) of an image folder")
    s.add_argument(
        "--gen",
        required=True,
        help="folder of generated images (evaluation.fid's GEN)",
    )
    s.add_argument(
        "--ref", help="reference folder or .npz statistics for FID (e.g. hw2_data/face/val)"
    )
    s.add_argument("--fid-weights", help="FID Inception weights (default: evaluation/fid.py's)")
    s.add_argument("--device", default="auto")
    s = sub.add_parser(
        "final",
        help="FID against val and face rate of each run's chosen generator, beside real faces",
    )
    s.add_argument(
        "--runs", default="runs/p4", help="folder holding dcgan/ and improved/ run folders"
    )
    s.add_argument(
        "--data", required=True, help="folder with train and val faces (folders or celeba10k .npz)"
    )
    s.add_argument("--out", required=True, help="where the generated and real images are written")
    s.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    s.add_argument(
        "--n",
        type=positive_int,
        default=1000,
        help="images per model (and real training faces for the floor)",
    )
    s.add_argument("--fid-weights", help="FID Inception weights (default: evaluation/fid.py's)")
    s.add_argument("--device", default="auto")
    s = sub.add_parser(
        "cost", help="FLOPs and measured seconds per training iteration; inference seconds"
    )
    s.add_argument("--batch-size", type=positive_int, default=train.DEFAULTS["batch_size"])
    s.add_argument(
        "--repeats", type=positive_int, default=3, help="timed iterations after one warm-up"
    )
    s.add_argument("--device", default="auto")
    s = sub.add_parser(
        "speed", help="training images/s of the plain step and of --fast-step (CUDA graphs)"
    )
    s.add_argument("--preset", default="shipped", choices=sorted(train.PRESETS))
    s.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[64, 128])
    s.add_argument(
        "--warmup",
        type=positive_int,
        default=10,
        help="untimed steps first (the fast step's capture)",
    )
    s.add_argument(
        "--seconds", type=positive_float, default=10.0, help="timed seconds per measurement"
    )
    s.add_argument("--device", default="auto")
    s = sub.add_parser(
        "resume-cost",
        help="train-face FID of a run resumed without optimizer state vs two straight runs",
    )
    s.add_argument("--data", required=True, help="folder with train.npz or train/ (celeba10k)")
    s.add_argument("--work", required=True, help="where the three run folders go")
    s.add_argument("--epochs", type=positive_int, default=20)
    s.add_argument(
        "--every",
        type=positive_int,
        default=4,
        help="epochs per session of the resumed run, and between FIDs",
    )
    s.add_argument("--g-channels", type=positive_int, default=16)
    s.add_argument("--d-channels", type=positive_int, default=32)
    s.add_argument("--batch-size", type=positive_int, default=64)
    s.add_argument("--fid-n", type=positive_int, default=500)
    s.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    s = sub.add_parser(
        "truncation",
        help="FID on training faces and face rate of one generator at each z truncation",
    )
    s.add_argument("generator", help="a generator file (p4_gan/checkpoints/p4_gan.pt is shipped)")
    s.add_argument(
        "--data", required=True, help="folder with the training faces (train/ or train.npz)"
    )
    s.add_argument(
        "--thresholds",
        type=positive_float,
        nargs="+",
        default=[2.0, 1.5, 1.0, 0.75, 0.5],
        help="truncations T of z to try (z entries outside [-T, T] redrawn), besides none",
    )
    s.add_argument("--n", type=positive_int, default=1000, help="images per truncation (run.sh's)")
    s.add_argument(
        "--fid-ref-n",
        type=positive_int,
        default=2000,
        help="training faces FID is measured against",
    )
    s.add_argument("--fid-weights", help="FID Inception weights (default: evaluation/fid.py's)")
    s.add_argument("--device", default="auto")
    for s in sub.choices.values():
        s.add_argument(
            "--json", help="also save the numbers here (p4_gan/report.py reads runs/p4/*.json)"
        )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = {
        "smoke": cmd_smoke,
        "eval": cmd_eval,
        "final": cmd_final,
        "cost": cmd_cost,
        "speed": cmd_speed,
        "resume-cost": cmd_resume_cost,
        "truncation": cmd_truncation,
    }[args.command](args)
    if args.json:
        result = {"command": command_line("bench.p4_gan", argv), **result}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"saved {args.json}")
    return result


if __name__ == "__main__":
    run_cli(main)
