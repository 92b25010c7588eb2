"""Every entry point against hostile input (issue 17): a 0-byte file, a text file, a bare tensor,
another problem's checkpoint, NaN noise, weights or embeddings, non-positive and non-finite
numbers, and an output path that exists as the wrong kind or already holds earlier results.

Each case must end with exit status 2, exactly one `error:` line on stderr and no traceback, and
leave the work folder byte for byte as it was: earlier outputs intact, nothing created, no
hidden staging file left behind. The matrix calls each command's main in-process through
run_cli (what `python -m MODULE` runs, without paying torch's import per case); the shell
wrappers, `--help` and the documented `python -m` spelling run as real subprocesses.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from hw2_utils import CLIError, output_dir, run_cli
from p1_ddpm.model import ConditionalUNet, UNetConfig
from p1_ddpm.pipeline import export_weights
from p2_ddim.unet import FaceUNet
from p3_textual_inversion.embeddings import save_embeds
from stable_diffusion.tiny import TEXT_DIM, build_tiny_sd, save_compvis_file, save_diffusers_folder

P5_SHIPPED = REPO / "p5_dann" / "checkpoints" / "mnistm_usps_dann.pt"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HW2_QUIET": "1"}


def _nan_copy(state: dict) -> dict:
    return {k: v * float("nan") if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def inp(tmp_path_factory) -> Path:
    """Inputs, good and bad, shared by all cases (read only)."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "zero.pt").write_bytes(b"")
    (d / "text.pt").write_text("hello\n")
    torch.save(torch.zeros(3), d / "bare.pt")
    torch.manual_seed(0)
    p1 = ConditionalUNet(
        UNetConfig(base_channels=8, channel_mults=(1, 2, 2), attention_levels=(2,), dropout=0.0)
    )
    torch.save(export_weights(p1, ["mnistm", "usps"], 0, "test"), d / "p1.pt")
    blob = torch.load(d / "p1.pt", weights_only=True)
    torch.save({**blob, "state_dict": _nan_copy(blob["state_dict"])}, d / "p1_nan.pt")
    shutil.copy(d / "p1.pt", d / "p1.pt2")  # a zip, but no torch.export program
    (d / "text.pt2").write_text("hello\n")
    unet = FaceUNet(32).state_dict()
    torch.save(unet, d / "unet.pt")
    torch.save(_nan_copy(unet), d / "unet_nan.pt")
    for name, value in (("noise", 0.0), ("noise_nan", float("nan"))):
        (d / name).mkdir()
        torch.save(torch.randn(1, 3, 32, 32) + value, d / name / "00.pt")
    (d / "noise_zero").mkdir()
    (d / "noise_zero" / "00.pt").write_bytes(b"")

    sd = build_tiny_sd(seed=0)
    save_diffusers_folder(sd, d / "sd")
    save_compvis_file(sd, d / "tiny.ckpt")
    (d / "zero.ckpt").write_bytes(b"")
    (d / "text.safetensors").write_text("x\n")
    vectors = {"<new1>": torch.randn(TEXT_DIM)}
    save_embeds(d / "embeds.safetensors", vectors)
    save_embeds(d / "embeds_nan.safetensors", {"<new1>": torch.full((TEXT_DIM,), float("nan"))})
    prompts = {"0": {"prompt": ["A <new1> on a hill."]}, "1": {"prompt": ["A <new1> by the sea."]}}
    (d / "input.json").write_text(json.dumps(prompts))
    (d / "clip.json").write_text(
        json.dumps({"0": {"src_image": "dog", "prompt_4_clip_eval": [], "baseline": []}})
    )

    (d / "images").mkdir()
    (d / "digits" / "mnistm").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (28, 28), (80 * i, 40, 200)).save(d / "images" / f"{i:05d}.png")
        Image.new("RGB", (28, 28), (80 * i, 40, 200)).save(d / "digits" / "mnistm" / f"{i}_001.png")
    (d / "runs").mkdir()
    (d / "labels_bad.csv").write_text("name,class\n00000.png,cat\n")
    (d / "captions.json").write_text("not json\n")
    np.savez(
        d / "cifar.npz",
        test_images=np.zeros((2, 32, 32, 3), np.uint8),
        test_labels=np.zeros(2, np.int64),
    )
    (d / "empty_gallery.txt").write_text("# only a comment\n\n")
    (d / "noise_empty").mkdir()
    torch.save(torch.zeros(1, 3, 0, 0), d / "noise_empty" / "00.pt")
    return d


@pytest.fixture
def work(tmp_path) -> Path:
    """The outputs of earlier runs, and other results sharing their folder."""
    w = tmp_path / "work"
    for name in ("out/keep.txt", "out/report.md", "pred.csv", "a_file.txt", "p3/1/0"):
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_bytes(f"earlier {name}".encode())
    # outputs an earlier run of the project wrote (recorded as such, so a run may replace them)
    for name in (
        "out/mnistm/0_001.png",
        "out/svhn/0_001.png",
        "out/00.png",
        "out/0/0/source0_prompt0_0.png",
    ):
        with output_dir((w / name).parent, [(w / name).name]) as stage:
            (stage / (w / name).name).write_bytes(f"earlier {name}".encode())
    return w


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


def check_one_error(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert expected in errors[0], err
    # item 11: the path the user gave, never a hidden temporary (.NAME.XXXX)
    assert "/." not in err, err


# (id, module, argv from (inputs, work), text the error line must contain). {i} and {w} in the
# expected text become the inputs and work folders, so most errors must name the user's path.
CASES = [
    # hw2_1.sh
    (
        "p1-zero-byte-checkpoint",
        "p1_ddpm.infer",
        lambda i, w: [w / "out", "--checkpoint", i / "zero.pt"],
        "{i}/zero.pt",
    ),
    (
        "p1-text-checkpoint",
        "p1_ddpm.infer",
        lambda i, w: [w / "out", "--checkpoint", i / "text.pt"],
        "{i}/text.pt",
    ),
    (
        "p1-bare-tensor",
        "p1_ddpm.infer",
        lambda i, w: [w / "new", "--checkpoint", i / "bare.pt"],
        "is not a P1 checkpoint",
    ),
    (
        "p1-p5-checkpoint",
        "p1_ddpm.infer",
        lambda i, w: [w / "out", "--checkpoint", P5_SHIPPED],
        "is not a P1 checkpoint",
    ),
    (
        "p1-nan-weights",
        "p1_ddpm.infer",
        lambda i, w: [
            w / "out",
            "--checkpoint",
            i / "p1_nan.pt",
            "--per-digit",
            "1",
            "--steps",
            "1",
            "--device",
            "cpu",
        ],
        "NaN or infinite values",
    ),
    (
        "p1-batch-size-0",
        "p1_ddpm.infer",
        lambda i, w: [w / "out", "--batch-size", "0"],
        "--batch-size",
    ),
    ("p1-steps-negative", "p1_ddpm.infer", lambda i, w: [w / "out", "--steps", "-5"], "--steps"),
    ("p1-steps-0", "p1_ddpm.infer", lambda i, w: [w / "out", "--steps", "0"], "--steps"),
    (
        "p1-per-digit-0",
        "p1_ddpm.infer",
        lambda i, w: [w / "out", "--per-digit", "0"],
        "--per-digit",
    ),
    (
        "p1-guidance-nan",
        "p1_ddpm.infer",
        lambda i, w: [w / "out", "--guidance", "nan"],
        "--guidance",
    ),
    (
        "p1-same-folder-twice",
        "p1_ddpm.infer",
        lambda i, w: [w / "out", "--folders", "a", "a"],
        "twice",
    ),
    (
        "p1-out-is-a-file",
        "p1_ddpm.infer",
        lambda i, w: [w / "a_file.txt", "--checkpoint", i / "p1.pt"],
        "{w}/a_file.txt",
    ),
    (
        "p1-second-folder-is-a-file",
        "p1_ddpm.infer",
        lambda i, w: [w, "--checkpoint", i / "p1.pt", "--folders", "out", "a_file.txt"],
        "{w}/a_file.txt",
    ),
    # p1_ddpm.train
    (
        "p1-train-sample-every-0",
        "p1_ddpm.train",
        lambda i, w: ["--out", w / "run", "--sample-every", "0"],
        "--sample-every",
    ),
    (
        "p1-train-batch-size-0",
        "p1_ddpm.train",
        lambda i, w: ["--out", w / "run", "--batch-size", "0"],
        "--batch-size",
    ),
    ("p1-train-lr-nan", "p1_ddpm.train", lambda i, w: ["--out", w / "run", "--lr", "nan"], "--lr"),
    (
        "p1-train-out-is-a-file",
        "p1_ddpm.train",
        lambda i, w: ["--out", w / "a_file.txt"],
        "{w}/a_file.txt",
    ),
    # hw2_2.sh
    (
        "p2-zero-byte-unet",
        "p2_ddim.infer",
        lambda i, w: [i / "noise", w / "out", i / "zero.pt"],
        "{i}/zero.pt",
    ),
    (
        "p2-text-unet",
        "p2_ddim.infer",
        lambda i, w: [i / "noise", w / "out", i / "text.pt"],
        "{i}/text.pt",
    ),
    (
        "p2-bare-tensor-unet",
        "p2_ddim.infer",
        lambda i, w: [i / "noise", w / "out", i / "bare.pt"],
        "{i}/bare.pt",
    ),
    (
        "p2-p1-checkpoint",
        "p2_ddim.infer",
        lambda i, w: [i / "noise", w / "out", i / "p1.pt"],
        "{i}/p1.pt",
    ),
    (
        "p2-nan-noise",
        "p2_ddim.infer",
        lambda i, w: [i / "noise_nan", w / "out", i / "unet.pt"],
        "{i}/noise_nan/00.pt",
    ),
    (
        "p2-zero-byte-noise",
        "p2_ddim.infer",
        lambda i, w: [i / "noise_zero", w / "out", i / "unet.pt"],
        "{i}/noise_zero/00.pt",
    ),
    (
        "p2-nan-weights",
        "p2_ddim.infer",
        lambda i, w: [i / "noise", w / "out", i / "unet_nan.pt", "--steps", "1", "--device", "cpu"],
        "NaN or infinite values",
    ),
    (
        "p2-steps-0",
        "p2_ddim.infer",
        lambda i, w: [i / "noise", w / "out", i / "unet.pt", "--steps", "0"],
        "--steps",
    ),
    (
        "p2-eta-nan",
        "p2_ddim.infer",
        lambda i, w: [i / "noise", w / "out", i / "unet.pt", "--eta", "nan"],
        "--eta",
    ),
    (
        "p2-precision-int8",
        "p2_ddim.infer",
        lambda i, w: [i / "noise", w / "new", i / "unet.pt", "--precision", "int8"],
        "int8",
    ),
    (
        "p2-out-is-a-file",
        "p2_ddim.infer",
        lambda i, w: [i / "noise", w / "a_file.txt", i / "unet.pt"],
        "{w}/a_file.txt",
    ),
    # hw2_3.sh (with the tiny SD's configs, so the embeddings' width fits and the model file is read)
    *[
        (
            f"p3-{name}-model",
            "p3_textual_inversion.infer",
            lambda i, w, model=model: [
                i / "input.json",
                w / "out",
                i / model,
                "--embeds",
                i / "embeds.safetensors",
                "--sd-config",
                i / "sd",
            ],
            f"{{i}}/{model}",
        )
        for name, model in (
            ("zero-byte", "zero.ckpt"),
            ("text", "text.pt"),
            ("corrupt-safetensors", "text.safetensors"),
            ("p1-checkpoint", "p1.pt"),
        )
    ],
    *[
        (
            f"p3-{name}-embeddings",
            "p3_textual_inversion.infer",
            lambda i, w, emb=emb: [
                i / "input.json",
                w / "new",
                i / "tiny.ckpt",
                "--embeds",
                i / emb,
                "--sd-config",
                i / "sd",
            ],
            f"{{i}}/{emb}",
        )
        for name, emb in (
            ("zero-byte", "zero.pt"),
            ("text", "text.safetensors"),
            ("nan", "embeds_nan.safetensors"),
        )
    ],
    (
        "p3-wrong-width-embeddings",
        "p3_textual_inversion.infer",
        lambda i, w: [
            i / "input.json",
            w / "new",
            i / "tiny.ckpt",
            "--embeds",
            i / "embeds.safetensors",
        ],
        "needs (768,)",
    ),
    *[
        (
            f"p3-{option}-{value}",
            "p3_textual_inversion.infer",
            lambda i, w, option=option, value=value: [
                i / "input.json",
                w / "out",
                i / "tiny.ckpt",
                f"--{option}",
                value,
            ],
            f"--{option}",
        )
        for option, value in (("n", "0"), ("steps", "0"), ("batch-size", "0"), ("guidance", "nan"))
    ],
    (
        "p3-prompt-folder-is-a-file",
        "p3_textual_inversion.infer",
        lambda i, w: [
            i / "input.json",
            w / "p3",
            i / "tiny.ckpt",
            "--embeds",
            i / "embeds.safetensors",
            "--sd-config",
            i / "sd",
        ],
        "{w}/p3/1/0 exists and is not a folder",
    ),
    # p5_dann/run.sh
    *[
        (
            f"p5-{name}-checkpoint",
            "p5_dann.infer",
            lambda i, w, ckpt=ckpt: [i / "images", w / "pred.csv", "--checkpoint", i / ckpt],
            f"{{i}}/{ckpt}",
        )
        for name, ckpt in (
            ("zero-byte", "zero.pt"),
            ("text", "text.pt"),
            ("bare-tensor", "bare.pt"),
            ("p1", "p1.pt"),
        )
    ],
    (
        "p5-batch-size-0",
        "p5_dann.infer",
        lambda i, w: [i / "images", w / "pred.csv", "--target", "usps", "--batch-size", "0"],
        "--batch-size",
    ),
    (
        "p5-batch-size-negative",
        "p5_dann.infer",
        lambda i, w: [i / "images", w / "pred.csv", "--target", "usps", "--batch-size", "-1"],
        "--batch-size",
    ),
    (
        "p5-out-is-a-folder",
        "p5_dann.infer",
        lambda i, w: [i / "images", w / "out", "--target", "usps"],
        "{w}/out",
    ),
    # graders
    *[
        (
            f"digits-{name}-classifier",
            "evaluation.digit_accuracy",
            lambda i, w, ckpt=ckpt: ["--folder", i / "digits", "--checkpoint", i / ckpt],
            f"{{i}}/{ckpt}",
        )
        for name, ckpt in (
            ("zero-byte", "zero.pt"),
            ("text", "text.pt"),
            ("bare-tensor", "bare.pt"),
        )
    ],
    *[
        (
            f"digits-{name}-svhn-pt2",
            "evaluation.digit_accuracy",
            lambda i, w, ckpt=ckpt: [
                "--folder",
                i / "digits",
                "--checkpoint",
                REPO.parent / "shared" / "data" / "grader" / "Classifier.pth",
                "--svhn-checkpoint",
                i / ckpt,
            ],
            f"{{i}}/{ckpt}",
        )
        for name, ckpt in (("text", "text.pt2"), ("torch-save", "p1.pt2"))
    ],
    *[
        (
            f"fid-{name}-weights",
            "evaluation.fid",
            lambda i, w, f=f: [i / "images", i / "images", "--weights", i / f],
            f"{{i}}/{f}",
        )
        for name, f in (("zero-byte", "zero.pt"), ("text", "text.pt"), ("bare-tensor", "bare.pt"))
    ],
    (
        "clip-empty-prompt-list",
        "evaluation.clip_scores",
        lambda i, w: ["--json_path", i / "clip.json", "--input_dir", i, "--output_dir", w / "out"],
        "non-empty list",
    ),
    (
        "report-out-is-a-file",
        "report.build",
        lambda i, w: [
            *("--runs", i / "runs", "--markdown", w / "md" / "RESULTS.md"),
            *("--pdf", w / "a_file.txt" / "report.pdf"),
        ],
        "{w}/a_file.txt",
    ),
    # P4
    (
        "p4-zero-byte-checkpoint",
        "p4_gan.infer",
        lambda i, w: [w / "out", "--checkpoint", i / "zero.pt"],
        "{i}/zero.pt",
    ),
    (
        "p4-train-missing-data",
        "p4_gan.train",
        lambda i, w: ["--preset", "dcgan", "--data", i / "absent", "--out", w / "run"],
        "{i}/absent",
    ),
    # P6
    (
        "p6-zero-byte-checkpoint",
        "p6_classification.infer",
        lambda i, w: [i / "images", w / "pred.csv", "--checkpoint", i / "zero.pt"],
        "{i}/zero.pt",
    ),
    (
        "p6-p1-checkpoint",
        "p6_classification.infer",
        lambda i, w: [i / "images", w / "pred.csv", "--checkpoint", i / "p1.pt"],
        "is not a P6 model.pt",
    ),
    (
        "p6-batch-size-0",
        "p6_classification.infer",
        lambda i, w: [i / "images", w / "pred.csv", "--batch-size", "0"],
        "--batch-size",
    ),
    (
        "p6-labels-without-columns",
        "p6_classification.infer",
        lambda i, w: [i / "images", w / "pred.csv", "--labels", i / "labels_bad.csv"],
        "image_name,label",
    ),
    (
        "p6-train-lr-negative",
        "p6_classification.train",
        lambda i, w: ["--out", w / "run", "--lr", "-0.1"],
        "--lr",
    ),
    (
        "p6-train-workers-negative",
        "p6_classification.train",
        lambda i, w: ["--out", w / "run", "--workers", "-1"],
        "--workers",
    ),
    (
        "p6-cam-no-images",
        "p6_classification.cam",
        lambda i, w: ["--correct", "0", "--wrong", "0", "--out", w / "cam"],
        "--correct",
    ),
    (
        "p6-aug-repeated-seed",
        "p6_classification.aug_study",
        lambda i, w: ["--spread-seeds", "0", "1", "--out", w / "aug"],
        "--spread-seeds",
    ),
    (
        "p6-aug-aug-for-presets",
        "p6_classification.aug_study",
        lambda i, w: ["--aug", "cutout", "--out", w / "aug"],
        "--presets",
    ),
    # issue 32's second probe
    (
        "p7-clip-zero-byte-weights",
        "p7_clip.zeroshot",
        lambda i, w: [
            "--clip",
            f"ViT-B-32={i / 'zero.pt'}",
            "--data",
            i / "cifar.npz",
            "--out",
            w / "zs",
        ],
        "zero.pt",
    ),
    (
        "p8-train-captions-not-json",
        "p8_controlnet.train",
        lambda i, w: [
            "--pretrained",
            i / "sd",
            "--data",
            i / "images",
            "--captions",
            i / "captions.json",
            "--out",
            w / "run",
        ],
        "not a COCO captions json",
    ),
    (
        "p8-empty-gallery",
        "p8_controlnet.txt2img",
        lambda i, w: [
            "--pretrained",
            i / "sd",
            "--gallery",
            i / "empty_gallery.txt",
            "--out",
            w / "g",
        ],
        "no prompt",
    ),
    (
        "p2-zero-size-noise",
        "p2_ddim.infer",
        lambda i, w: [i / "noise_empty", w / "out", i / "unet.pt"],
        "positive multiples of 32",
    ),
    (
        "p1-seed-huge",
        "p1_ddpm.infer",
        lambda i, w: [w / "out", "--seed", "99999999999999999999999"],
        "--seed",
    ),
    (
        "p1-folders-twice",
        "p1_ddpm.infer",
        lambda i, w: [w / "out", "--checkpoint", i / "p1.pt", "--folders", "a", "./a"],
        "names a folder twice",
    ),
    ("p4-out-name-too-long", "p4_gan.infer", lambda i, w: [w / ("x" * 250)], "name too long"),
]


def _needs(case_id: str) -> None:
    if case_id.startswith("digits-") and "svhn" in case_id:
        from conftest import require_shared

        require_shared("grader", "Classifier.pth")


@pytest.mark.parametrize(
    "case_id, module, argv, expected", [pytest.param(*case, id=case[0]) for case in CASES]
)
def test_bad_input_is_one_error_line_and_changes_nothing(
    case_id, module, argv, expected, inp, work, capsys
):
    _needs(case_id)
    main = importlib.import_module(module).main
    before = snapshot(work.parent)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main([str(a) for a in argv(inp, work)]))
    check_one_error(exit_info.value.code, capsys.readouterr().err, expected.format(i=inp, w=work))
    assert snapshot(work.parent) == before


@pytest.mark.parametrize(
    "script, argv, expected",
    [
        pytest.param(
            "hw2_1.sh",
            lambda i, w: [w / "out", "--checkpoint", i / "zero.pt"],
            "{i}/zero.pt",
            id="hw2_1",
        ),
        pytest.param(
            "hw2_2.sh",
            lambda i, w: [i / "noise", w / "out", i / "text.pt"],
            "{i}/text.pt",
            id="hw2_2",
        ),
        pytest.param(
            "hw2_3.sh",
            lambda i, w: [
                i / "input.json",
                w / "out",
                i / "zero.ckpt",
                "--embeds",
                i / "embeds.safetensors",
                "--sd-config",
                i / "sd",
            ],
            "{i}/zero.ckpt",
            id="hw2_3",
        ),
        pytest.param(
            "p5_dann/run.sh",
            lambda i, w: [i / "images", w / "pred.csv", "--batch-size", "0"],
            "--batch-size",
            id="p5",
        ),
        pytest.param(
            "p4_gan/run.sh",
            lambda i, w: [w / "out", "--checkpoint", i / "zero.pt"],
            "{i}/zero.pt",
            id="p4",
        ),
    ],
)
def test_wrappers_report_one_error_line(script, argv, expected, inp, work):
    before = snapshot(work.parent)
    r = subprocess.run(
        ["bash", str(REPO / script), *map(str, argv(inp, work))],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    check_one_error(r.returncode, r.stderr, expected.format(i=inp, w=work))
    assert snapshot(work.parent) == before


@pytest.mark.parametrize(
    "script, shows",
    [
        ("hw2_2.sh", "--pixel-map"),
        ("hw2_3.sh", "--embeds"),
        ("p5_dann/run.sh", "--batch-size"),
        ("hw2_download_ckpt.sh", "--list"),
        ("get_dataset.sh", "2022"),
    ],
)
def test_help_exits_0_with_the_options(script, shows, tmp_path):
    r = subprocess.run(
        ["bash", str(REPO / script), "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and shows in r.stdout and not r.stderr.strip(), r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing fetched or created


def python_in_repo_root(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """This Python with `args`, from the repository root and without PYTHONPATH, as a user
    types the README's commands."""
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.parametrize(
    "module",
    [
        "p1_ddpm.train",
        "evaluation.digit_accuracy",
        "bench.p1_ddpm",
        "report.build",
    ],
)
def test_documented_module_commands_run_from_the_repo_root(module):
    """The README's spelling, `python -m package.module`, from the repository root with no PYTHONPATH."""
    r = python_in_repo_root(["-m", module, "--help"], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"python -m {module}" in r.stdout  # its docstring's usage lines use the same spelling


# Runs `--help` of each module in one interpreter (imports shared: seconds, not minutes).
HELP_EACH = """
import contextlib, io, json, runpy, sys
sys.path.insert(0, ".")
failed = {}
for module in json.loads(sys.argv[1]):
    out, sys.argv = io.StringIO(), [module, "--help"]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = None
    except SystemExit as e:
        code = e.code
    if code not in (0, None) or f"python -m {module}" not in out.getvalue():
        failed[module] = code
print(json.dumps(failed))
"""


def test_every_module_the_readmes_document_runs_as_written():
    """Every `python -m package.module` in README.md and the checkpoints' READMEs exists, runs
    from the repository root and shows its own spelling in --help (its docstring's usage)."""
    # not report/RESULTS.md: its records cite the commands that made them, some since replaced
    docs = [REPO / "README.md", REPO / "CONTRIBUTING.md"]
    text = "".join(p.read_text() for p in [*docs, *REPO.glob("p*/checkpoints/README.md")])
    pattern = r"python3? -m ((?:bench|evaluation|report|p\d_[a-z_]+)\.[a-z0-9_]+)"
    modules = sorted(set(re.findall(pattern, text)))
    assert len(modules) >= 25  # the pattern still finds the documented commands (29 today)
    r = python_in_repo_root(["-W", "ignore", "-c", HELP_EACH, json.dumps(modules)], timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {}


def test_missing_embeddings_say_how_to_make_them(inp, tmp_path, monkeypatch):
    """No download exists for the learned embeddings (checkpoints.tsv has no row for them): the
    errors must say how to train them instead of pointing at hw2_download_ckpt.sh."""
    from p3_textual_inversion import infer

    monkeypatch.setattr(infer, "SHIPPED_EMBEDS_DIR", tmp_path)
    for extra in ([], ["--embeds", str(tmp_path / "new1.safetensors")]):
        with pytest.raises(CLIError) as info:
            infer.main(
                [str(inp / "input.json"), str(tmp_path / "out"), str(inp / "tiny.ckpt"), *extra]
            )
        assert "python -m p3_textual_inversion.train" in str(
            info.value
        ) and "hw2_download_ckpt" not in str(info.value)
    rows = [
        line.split("\t")[0]
        for line in (REPO / "checkpoints.tsv").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert not any(name.endswith(".safetensors") for name in rows)


def test_long_prompt_is_cut_with_a_warning(inp, tmp_path, capsys):
    from p3_textual_inversion import infer

    prompt = "A <new1> " + "on a very green hill " * 20
    (tmp_path / "long.json").write_text(json.dumps({"0": {"prompt": [prompt]}}))
    infer.main(
        [
            str(tmp_path / "long.json"),
            str(tmp_path / "out"),
            str(inp / "tiny.ckpt"),
            "--embeds",
            str(inp / "embeds.safetensors"),
            "--sd-config",
            str(inp / "sd"),
            "--n",
            "1",
            "--steps",
            "1",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert "warning: concept 0 prompt 0 is" in err and "only the first 77 are used" in err


def test_hw2_quiet_silences_the_loading_bars(inp):
    code = (
        "import hw2_utils; from stable_diffusion.loader import load_stable_diffusion; "
        f"load_stable_diffusion({str(inp / 'sd')!r})"
    )
    # importing hw2_utils here set it
    env = {k: v for k, v in ENV.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    loud, quiet = (
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
            env={**env, "HW2_QUIET": value},
        )
        for value in ("0", "1")
    )
    assert loud.returncode == quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Loading weights" in loud.stderr and quiet.stderr.strip() == ""
