"""The problem-specific defects of issue 43, from the outside, on real files in a temporary
folder. A bad input gives exit status 2, exactly one `error:` line naming what is wrong, no
traceback, and leaves the folder byte for byte as it was; an input the course's contract
allows just works. Every entry point runs at least once as the TA runs it (the shell wrapper,
or `python -m` for a grader); the other cases call the main that the wrapper execs through
run_cli in this process (as tests/test_cli_bad_inputs.py does), so the file does not pay
torch's import for each case."""

from __future__ import annotations

import csv
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, require_shared
from hw2_utils import run_cli
from evaluation.digit_accuracy import LeNet
from p2_ddim.unet import FaceUNet
from p3_textual_inversion.embeddings import save_embeds
from stable_diffusion.tiny import TEXT_DIM
from test_cli_bad_inputs import check_one_error, snapshot

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HW2_QUIET": "1", "PYTHON": sys.executable}
P5_CHECKPOINT = REPO / "p5_dann" / "checkpoints" / "mnistm_usps_dann.pt"


def run(script: str, *args, env=ENV, module: bool = False) -> subprocess.CompletedProcess:
    """`bash REPO/script ARGS`, or `python -m script ARGS` from the repository root."""
    command = [sys.executable, "-m", script] if module else ["bash", str(REPO / script)]
    return subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=240,
    )


# what each wrapper execs
MAINS = {
    "hw2_2.sh": "p2_ddim.infer",
    "hw2_3.sh": "p3_textual_inversion.infer",
    "p5_dann/run.sh": "p5_dann.infer",
}


def refused(tmp_path: Path, script: str, *args, expected: str, capsys=None, **kwargs) -> str:
    """Run the command on inputs under tmp_path, as a subprocess, or with `capsys` its main in
    this process: one error line holding `expected`, nothing changed under tmp_path. Returns
    the error line."""
    before = snapshot(tmp_path)
    if capsys is None:
        r = run(script, *args, **kwargs)
        code, err = r.returncode, r.stderr
    else:
        main = importlib.import_module(MAINS.get(script, script)).main
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: main([str(a) for a in args]))
        code, err = exit_info.value.code, capsys.readouterr().err
    check_one_error(code, err, expected)
    assert snapshot(tmp_path) == before
    return next(line for line in err.splitlines() if "error:" in line)


# ---- P2: bash hw2_2.sh NOISE_DIR OUT_DIR UNET_PT ------------------------------------------


@pytest.fixture(scope="module")
def unet_state(tmp_path_factory) -> dict:
    torch.manual_seed(0)
    return FaceUNet(32).state_dict()


def p2_inputs(root: Path, state: dict, noise: torch.Tensor, name: str = "00.pt") -> Path:
    (root / "noise").mkdir()
    torch.save(noise, root / "noise" / name)
    torch.save(state, root / "UNet.pt")
    return root


def p2_refused(root: Path, expected: str, capsys) -> str:
    return refused(
        root,
        "hw2_2.sh",
        root / "noise",
        root / "out",
        root / "UNet.pt",
        "--steps",
        "1",
        "--device",
        "cpu",
        expected=expected,
        capsys=capsys,
    )


GOOD_NOISE = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "noise, expected",
    [
        (GOOD_NOISE.to_sparse(), "00.pt is a sparse_coo tensor"),
        (torch.empty(1, 3, 32, 32, device="meta"), "00.pt is a meta tensor"),
        (GOOD_NOISE.to(torch.complex64), "00.pt has dtype torch.complex64"),
        (
            GOOD_NOISE.double() * 1e30,
            f"00.pt holds values up to {float(GOOD_NOISE.abs().max()) * 1e30:.3g} in magnitude",
        ),
    ],
    ids=["sparse", "meta", "complex", "huge"],
)
def test_p2_noise_that_is_not_dense_standard_normal_is_refused_naming_the_file(
    tmp_path, unet_state, noise, expected, capsys
):
    line = p2_refused(
        p2_inputs(tmp_path, unet_state, noise), f"{tmp_path}/noise/{expected}", capsys
    )
    assert "weights" not in line  # the noise is to blame, not the UNet


def test_p2_upper_case_pt_is_read_and_written_as_nn_png(tmp_path, unet_state):
    p2_inputs(tmp_path, unet_state, GOOD_NOISE, name="00.PT")
    torch.save(GOOD_NOISE, tmp_path / "noise" / "01.pt")
    args = ("--steps", "1", "--device", "cpu")
    r = run("hw2_2.sh", tmp_path / "noise", tmp_path / "out", tmp_path / "UNet.pt", *args)
    assert r.returncode == 0, r.stderr
    images = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert images == ["00.png", "01.png"]
    # the same noise under either spelling makes the same image
    assert Image.open(tmp_path / "out" / "00.png").tobytes() == (
        Image.open(tmp_path / "out" / "01.png").tobytes()
    )


def test_p2_two_noise_files_for_one_image_are_refused(tmp_path, unet_state, capsys):
    p2_inputs(tmp_path, unet_state, GOOD_NOISE, name="00.PT")
    torch.save(GOOD_NOISE, tmp_path / "noise" / "00.pt")
    p2_refused(tmp_path, "noise files 00.PT, 00.pt in", capsys)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_p2_integer_or_complex_weights_are_refused_naming_a_key(
    tmp_path, unet_state, dtype, capsys
):
    key = "mid1.resblocks.conv1.bias"
    state = {**unet_state, key: unet_state[key].to(dtype)}
    expected = f"UNet.pt: {key} has dtype {dtype}"
    p2_refused(p2_inputs(tmp_path, state, GOOD_NOISE), expected, capsys)


def test_p2_a_one_dimensional_first_weight_is_one_short_line(tmp_path, unet_state, capsys):
    state = {**unet_state, "down1.weight": torch.zeros(32)}
    line = p2_refused(p2_inputs(tmp_path, state, GOOD_NOISE), "down1.weight", capsys)
    assert "has shape (32,)" in line and len(line) < 300


def test_p2_many_mismatches_name_the_first_keys_and_the_count(tmp_path, unet_state, capsys):
    biases = [k for k in unet_state if k.endswith(".bias")]
    state = {**unet_state, **{k: torch.zeros(5) for k in biases}}
    line = p2_refused(p2_inputs(tmp_path, state, GOOD_NOISE), "shape mismatches [", capsys)
    first = f"{biases[0]} (5,) != {tuple(unet_state[biases[0]].shape)}"
    assert f"{len(biases)} shape mismatches [{first}, " in line
    assert f", ... ({len(biases) - 3} more)]" in line and len(line) < 400


def test_p2_output_folder_that_is_the_unet_file_is_refused(tmp_path, unet_state):
    p2_inputs(tmp_path, unet_state, GOOD_NOISE)
    unet = tmp_path / "UNet.pt"
    refused(
        tmp_path,
        "hw2_2.sh",
        tmp_path / "noise",
        unet,
        unet,
        expected=f"output {unet} is an input ({unet})",
    )


# ---- P3: bash hw2_3.sh INPUT_JSON OUT_DIR MODEL_CKPT --------------------------------------


def p3_inputs(root: Path, text: str | bytes) -> list:
    """hw2_3.sh's arguments for this json. The model is absent on purpose: the json is read,
    and judged, before it."""
    (root / "input.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    save_embeds(root / "embeds.safetensors", {"<new1>": torch.zeros(TEXT_DIM)})
    embeds = ["--embeds", root / "embeds.safetensors"]
    return [root / "input.json", root / "out", root / "sd-v1-4.ckpt", *embeds]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"0": {"prompt": ["A <new1>."]}, "0": {"prompt": ["B"]}}', "key '0' appears twice"),
        ('{"0": {"prompt": ["A <new1>."], "prompt": ["B"]}}', "key 'prompt' appears twice"),
        ('{"a\\nb": {"prompt": ["A <new1>."]}}', r"concept key 'a\nb' cannot be a folder name"),
        ('{"a\\u0000": {"prompt": ["A <new1>."]}}', r"concept key 'a\x00' cannot be"),
        ('{"a\\\\b": {"prompt": ["A <new1>."]}}', r"concept key 'a\\b' cannot be"),
        ('{"x/y": {"prompt": ["A <new1>."]}}', "concept key 'x/y' cannot be"),
        ('{"..": {"prompt": ["A <new1>."]}}', "concept key '..' cannot be"),
        ('{".hidden": {"prompt": ["A <new1>."]}}', "concept key '.hidden' cannot be"),
    ],
    ids=["duplicate-concept", "duplicate-prompt", "newline", "nul", "backslash", "slash",
         "dotdot", "leading-dot"],
)  # fmt: skip
def test_p3_json_keys_given_twice_or_unfit_for_a_folder_are_refused(
    tmp_path, text, expected, capsys
):
    args = p3_inputs(tmp_path, text)
    expected = f"{tmp_path}/input.json: {expected}"
    refused(tmp_path, "hw2_3.sh", *args, expected=expected, capsys=capsys)


def test_p3_json_with_a_utf8_byte_order_mark_is_read(tmp_path):
    bom = b"\xef\xbb\xbf" + json.dumps({"0": {"prompt": ["A <new1>."]}}).encode()
    args = p3_inputs(tmp_path, bom)
    # past the json and the embeddings: the next thing judged is the (absent) model
    refused(tmp_path, "hw2_3.sh", *args, expected="Stable Diffusion checkpoint not found")


# ---- P5: bash p5_dann/run.sh IMG_DIR OUT_CSV ----------------------------------------------


@pytest.fixture
def digits(tmp_path) -> Path:
    folder = tmp_path / "usps"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (28, 28), 60 * i).save(folder / f"{i:05d}.png")
    return folder


def test_p5_entries_named_like_images_that_are_no_files_are_refused(tmp_path, digits, capsys):
    (digits / "a_dangling.png").symlink_to(tmp_path / "nowhere.png")
    (digits / "b_loop.png").symlink_to(digits / "b_loop.png")
    (digits / "c_folder.png").mkdir()
    refused(
        tmp_path,
        "p5_dann/run.sh",
        digits,
        tmp_path / "pred.csv",
        expected=f"{digits}/a_dangling.png is a dangling symlink, not an image file (3 such",
    )
    (digits / "a_dangling.png").unlink()
    expected = f"{digits}/b_loop.png is a symlink loop, not an image file (2 such"
    refused(
        tmp_path, "p5_dann/run.sh", digits, tmp_path / "pred.csv", expected=expected, capsys=capsys
    )
    (digits / "b_loop.png").unlink()
    expected = f"{digits}/c_folder.png is a folder, not an image file (1 such"
    refused(
        tmp_path, "p5_dann/run.sh", digits, tmp_path / "pred.csv", expected=expected, capsys=capsys
    )


@pytest.mark.parametrize("which", ["image", "checkpoint"])
def test_p5_csv_that_is_one_of_its_inputs_is_refused_before_any_work(
    tmp_path, digits, which, capsys
):
    shutil.copy(P5_CHECKPOINT, tmp_path / "model.pt")
    out = digits / "00001.png" if which == "image" else tmp_path / "model.pt"
    refused(
        tmp_path,
        "p5_dann/run.sh",
        digits,
        out,
        "--checkpoint",
        tmp_path / "model.pt",
        expected=f"output {out} is an input ({out})",
        capsys=capsys,
    )


def test_p5_csv_that_is_a_link_to_an_input_is_refused(tmp_path, digits, capsys):
    (tmp_path / "pred.csv").symlink_to(digits / "00002.png")
    expected = f"output {tmp_path}/pred.csv is an input ({digits}/00002.png)"
    refused(
        tmp_path, "p5_dann/run.sh", digits, tmp_path / "pred.csv", expected=expected, capsys=capsys
    )


def test_p5_wrong_architecture_names_the_first_keys_and_the_count(tmp_path, digits, capsys):
    blob = torch.load(P5_CHECKPOINT, weights_only=True)
    state = dict(blob["state_dict"])
    first, second = list(state)[:2]
    del state[first]
    state["head.extra"] = torch.zeros(1)
    state[second] = torch.zeros(5)
    torch.save({**blob, "state_dict": state}, tmp_path / "other.pt")
    refused(
        tmp_path,
        "p5_dann/run.sh",
        digits,
        tmp_path / "pred.csv",
        "--checkpoint",
        tmp_path / "other.pt",
        expected=f"3 keys do not match the DANN (missing {first}, unexpected head.extra, "
        f"{second} (5,) != {tuple(blob['state_dict'][second].shape)})",
        capsys=capsys,
    )


def predictions(csv_path: Path) -> dict[str, str]:
    with open(csv_path) as f:
        return {row["image_name"]: row["label"] for row in csv.DictReader(f)}


def test_p5_a_16_bit_digit_gets_the_label_of_its_8_bit_copy(tmp_path):
    source = require_shared("hw2_data", "digits", "usps", "data")
    folder = tmp_path / "usps"  # both copies in one folder: one run predicts both
    folder.mkdir()
    names = sorted(p.name for p in source.iterdir())[:40]
    for name in names:
        pixels = np.asarray(Image.open(source / name).convert("L"))
        Image.fromarray(pixels).save(folder / f"8bit_{name}")
        wide = Image.fromarray(pixels.astype(np.uint16) * 257)
        assert wide.mode == "I;16"
        wide.save(folder / f"16bit_{name}")
    r = run("p5_dann/run.sh", folder, tmp_path / "pred.csv")
    assert r.returncode == 0, r.stderr
    labels = predictions(tmp_path / "pred.csv")
    eight = [labels[f"8bit_{name}"] for name in names]
    assert len(set(eight)) > 3  # real, varied predictions
    assert [labels[f"16bit_{name}"] for name in names] == eight


# ---- the P1 grader: python -m evaluation.digit_accuracy ------------------------------------


@pytest.fixture
def grader(tmp_path) -> Path:
    torch.manual_seed(0)
    torch.save({"state_dict": LeNet().state_dict()}, tmp_path / "Classifier.pth")
    (tmp_path / "out" / "mnistm").mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (28, 28), (40 * k, 80, 120)).save(
            tmp_path / "out" / "mnistm" / f"{k}_001.png"
        )
    return tmp_path


def grade(root: Path, expected: str, capsys=None) -> str:
    return refused(
        root,
        "evaluation.digit_accuracy",
        "--folder",
        root / "out",
        "--checkpoint",
        root / "Classifier.pth",
        "--device",
        "cpu",
        module=True,
        expected=expected,
        capsys=capsys,
    )


def test_digits_a_non_square_image_is_refused_as_the_course_grader_cannot_score_it(grader):
    mnistm = grader / "out" / "mnistm"
    for name in ("5_002.png", "6_002.png"):
        Image.new("RGB", (28, 40)).save(mnistm / name)
    grade(grader, f"{mnistm}/5_002.png is 28x40, not square (2 such images)")


def test_digits_a_name_starting_with_a_non_ascii_digit_is_refused(grader, capsys):
    Image.new("RGB", (28, 28)).save(grader / "out" / "mnistm" / "\u00b2_001.png")
    grade(grader, "\u00b2_001.png (the name must start with 0-9)", capsys)


# ---- hw2_utils/python.sh, sourced by every wrapper ----------------------------------------


@pytest.mark.parametrize("python", ["/nonexistent", "/tmp", "no-such-python-here"])
def test_a_python_that_is_not_an_executable_is_one_error_line(tmp_path, python):
    refused(
        tmp_path,
        "hw2_1.sh",
        tmp_path / "out",
        env={**ENV, "PYTHON": python},
        expected=f"hw2_1.sh: error: PYTHON={python} is not an executable",
    )
