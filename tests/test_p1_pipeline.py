"""P1 end to end on a tiny model: the hw2_1 output contract, determinism, bad input,
training on real MNIST-M (loss falls, resume continues)."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REPO, require_shared, small_digits
from hw2_utils import run_cli
from p1_ddpm import infer
from p1_ddpm.data import load_split
from p1_ddpm.diffusion import GaussianDiffusion
from p1_ddpm.model import ConditionalUNet, UNetConfig
from p1_ddpm.pipeline import SHIPPED_CHECKPOINT, export_weights, generate, load_model

# attention at 7x7 only: cheap
TINY = dict(base_channels=8, channel_mults=(1, 2, 2), attention_levels=(2,), dropout=0.0)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(
        export_weights(ConditionalUNet(UNetConfig(**TINY)), ["mnistm", "usps"], 0, "test"), path
    )
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m p1_ddpm.MODULE ARGS` from the repository root, as the README spells it."""
    return subprocess.run(
        [sys.executable, "-m", f"p1_ddpm.{module}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_output_contract_names_count_size_mode(tiny_ckpt, tmp_path):
    out = tmp_path / "new" / "out"  # OUT is created when missing
    infer.main([str(out), "--checkpoint", str(tiny_ckpt), "--steps", "1", "--device", "cpu"])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["mnistm", "svhn"]
    expected = sorted(f"{d}_{k:03d}.png" for d in range(10) for k in range(1, 51))
    for folder in ("mnistm", "svhn"):
        names = sorted(p.name for p in (out / folder).iterdir())
        assert names == expected  # exactly 500 each, nothing else (no temp files left)
        for name in (names[0], names[-1]):
            with Image.open(out / folder / name) as img:
                assert (img.size, img.mode, img.format) == ((28, 28), "RGB", "PNG")


def test_same_seed_same_bytes_other_seed_differs(tiny_ckpt, tmp_path):
    def run(name, seed):
        infer.main(
            [
                str(tmp_path / name),
                "--checkpoint",
                str(tiny_ckpt),
                "--steps",
                "2",
                "--per-digit",
                "2",
                "--seed",
                str(seed),
                "--device",
                "cpu",
            ]
        )
        return _digests(tmp_path / name)

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    assert len(a) == 40 and a == b
    assert all(a[k] != c[k] for k in a)


def test_load_model_round_trip(tiny_ckpt):
    model, domains = load_model(tiny_ckpt, torch.device("cpu"))
    assert domains == ["mnistm", "usps"] and model.config.base_channels == 8 and not model.training


def _in_process(main, args, capsys) -> tuple[int, str]:
    """Run a CLI's main through run_cli as `python -m ...` would, without a new process."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(args))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "corrupt", "unwritable", "too_many_folders"])
def test_bad_input_is_one_line_error(case, tiny_ckpt, tmp_path, capsys):
    ckpt, out, extra = str(tiny_ckpt), str(tmp_path / "out"), []
    if case == "missing":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "corrupt":
        ckpt = tmp_path / "bad.pt"
        ckpt.write_bytes(b"not a checkpoint" * 10)
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = str(tmp_path / "file" / "out")
    else:
        extra = ["--folders", "a", "b", "c"]
    code, err = _in_process(
        infer.main,
        [out, "--checkpoint", str(ckpt), "--steps", "1", "--per-digit", "1", *extra],
        capsys,
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error:" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_unknown_domain_is_one_line_error_from_the_real_cli(tmp_path):
    r = _cli(
        "train",
        "--data",
        str(tmp_path),
        "--domains",
        "mnistm",
        "klingon",
        "--out",
        str(tmp_path / "r"),
    )
    assert (
        r.returncode == 2
        and "domain 'mnistm'" in r.stderr
        and len(r.stderr.strip().splitlines()) == 1
    )


def test_training_reduces_loss_on_a_real_mnistm_batch():
    images, labels = load_split(require_shared("hw2_data", "digits", "mnistm"), "val")
    x = images[:32].float() / 127.5 - 1
    digit, domain = labels[:32], torch.zeros(32, dtype=torch.long)
    torch.manual_seed(0)
    model = ConditionalUNet(UNetConfig(**TINY))
    diffusion = GaussianDiffusion()
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (32,), generator=g)
    noise = torch.randn(x.shape, generator=g)

    def fixed_loss():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(
                model(diffusion.q_sample(x, t, noise), t, digit, domain), noise
            ).item()

    before = fixed_loss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(25):
        loss = diffusion.training_loss(model, x, digit, domain, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.7 * before


def test_train_cli_writes_checkpoints_and_resumes(tmp_path):
    root = small_digits(tmp_path / "digits")
    common = [
        "--data",
        str(root),
        "--domains",
        "mnistm",
        "usps",
        "--out",
        str(tmp_path / "run"),
        "--batch-size",
        "16",
        "--base-channels",
        "8",
        "--ckpt-every",
        "2",
        "--sample-every",
        "100",
        "--device",
        "cpu",
    ]
    assert _cli("train", *common, "--steps", "2").returncode == 0
    r = _cli("train", *common, "--steps", "4")
    assert r.returncode == 0, r.stderr[-1000:]
    assert "resumed from" in r.stdout and "at step 2" in r.stdout
    with open(tmp_path / "run" / "log.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3, 4]
    model, domains = load_model(tmp_path / "run" / "model.pt", torch.device("cpu"))
    assert domains == ["mnistm", "usps"]
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["step"] == 4
    assert (tmp_path / "run" / "samples" / "step000004.png").is_file()

    warm = [a if a != str(tmp_path / "run") else str(tmp_path / "warm") for a in common]
    r = _cli(
        "train",
        *warm,
        "--steps",
        "5",
        "--init-from",
        str(tmp_path / "run" / "model.pt"),
        "--repeat",
        "2",
        "1",
    )
    assert r.returncode == 0 and "warm start" in r.stdout, r.stderr[-1000:]
    assert "96 training images" in r.stdout  # mnistm's 32 images twice, usps's once
    with open(tmp_path / "warm" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == [5]
    # the warm start warms up again from its first step
    assert float(rows[0]["lr"]) == pytest.approx(5e-4 / 200)
    recipe = torch.load(tmp_path / "warm" / "model.pt", weights_only=True)["recipe"]
    assert recipe.count("python -m p1_ddpm.train ") == 2 and "&&" in recipe  # both stages, in order

    r = _cli("train", *warm, "--steps", "6", "--no-resume", "--repeat", "1")
    assert r.returncode == 2 and "--repeat" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_shipped_checkpoint_loads_with_its_recipe():
    """hw2_1.sh's default: it loads with today's code, names the commands that made it, samples."""
    model, domains = load_model(SHIPPED_CHECKPOINT, torch.device("cpu"))
    assert domains == ["mnistm", "usps"]
    assert "p1_ddpm/train.py" in torch.load(SHIPPED_CHECKPOINT, weights_only=True)["recipe"]
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    images, _ = generate(
        model,
        torch.tensor([3]),
        torch.tensor([0]),
        seed=0,
        guidance=infer.GUIDANCE,
        sampler="ddim",
        steps=5,
        device=torch.device("cpu"),
    )
    assert images.shape == (1, 3, 28, 28) and images.abs().max() <= 1
