"""p4_gan/run.sh and infer.py on a tiny random-init generator: the course's 1000 names at
64x64, the same bytes on every run, nothing else touched in OUT, and one-line errors for
a missing, corrupt or foreign checkpoint."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
import torch
from PIL import Image

from conftest import REPO
from hw2_utils import CLIError
from p4_gan import infer
from p4_gan.models import GANConfig, Generator
from p4_gan.pipeline import save_generator, with_standing_stats

RUN_SH = REPO / "p4_gan" / "run.sh"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("p4_infer") / "generator.pt"
    save_generator(
        path,
        with_standing_stats(Generator(GANConfig(g_channels=4, d_channels=4))),
        {"model": "dcgan", "step": 0},
    )
    return path


def _run_sh(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HW2_QUIET": "1"}
    return subprocess.run(
        ["bash", str(RUN_SH), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_run_sh_writes_1000_faces_with_the_same_bytes_as_a_second_run(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = _run_sh(out, "--checkpoint", checkpoint, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    # no staging folder left behind
    assert names == sorted([f"{k:04d}.png" for k in range(1000)] + ["notes.txt"])
    with Image.open(out / "0999.png") as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    first = _digests(out)
    assert len(set(first.values())) == 1001  # distinct images, not one repeated

    again = tmp_path / "again"
    infer.main([str(again), "--checkpoint", str(checkpoint), "--device", "cpu"])
    assert _digests(again) == {k: v for k, v in first.items() if k != "notes.txt"}
    infer.main(
        [str(again), "--checkpoint", str(checkpoint), "--device", "cpu", "--seed", "1", "--n", "3"]
    )
    assert _digests(again)["0000.png"] != first["0000.png"]


def test_missing_checkpoint_is_one_line_naming_the_file_and_the_training_command(tmp_path):
    with pytest.raises(CLIError) as error:
        infer.main([str(tmp_path / "out"), "--checkpoint", str(tmp_path / "nope.pt")])
    message = str(error.value)
    assert "\n" not in message and "nope.pt" in message and "python -m p4_gan.train" in message
    assert not (tmp_path / "out").exists()
    r = _run_sh()
    assert r.returncode == 2 and r.stderr.startswith("usage:")


def test_corrupt_or_foreign_checkpoints_are_clear_errors(checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(CLIError, match="not a readable PyTorch file"):
        infer.main([str(tmp_path / "a"), "--checkpoint", str(corrupt)])
    foreign = tmp_path / "state_dict.pt"
    torch.save(Generator(GANConfig(g_channels=4)).state_dict(), foreign)
    with pytest.raises(CLIError, match="not a P4 generator checkpoint"):
        infer.main([str(tmp_path / "b"), "--checkpoint", str(foreign)])
    wrong = torch.load(checkpoint, weights_only=True)
    wrong["config"]["g_channels"] = 8
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CLIError, match="do not fit the generator"):
        infer.main([str(tmp_path / "c"), "--checkpoint", str(tmp_path / "wrong.pt")])
    assert not any((tmp_path / d).exists() for d in "abc")  # nothing written on failure
