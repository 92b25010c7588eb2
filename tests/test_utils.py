"""The shared utils package: seeding, devices, dtypes, atomic outputs, CLI errors."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import hw2_utils as U
from hw2_utils.files import _umask


def test_same_seed_same_tensors_and_generators_are_independent_of_global_rng():
    U.seed_everything(123)
    a = torch.randn(5), torch.rand(3)
    U.seed_everything(123)
    b = torch.randn(5), torch.rand(3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))

    g1 = U.make_generator(7)
    torch.manual_seed(999)  # the global RNG must not matter
    x = torch.randn(4, generator=g1)
    assert torch.equal(x, torch.randn(4, generator=U.make_generator(7)))
    assert not torch.equal(x, torch.randn(4, generator=U.make_generator(8)))


def test_rank_aware_seed_differs_per_rank():
    assert U.seed_everything(5, rank=0) != U.seed_everything(5, rank=1)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "tpu", "cpu:0", ""])
def test_device_parsing_rejects_bad_values(spec):
    if spec == "":  # empty means auto
        assert U.resolve_device(spec).type in {"cpu", "cuda"}
        return
    with pytest.raises(U.CLIError, match="device"):
        U.resolve_device(spec)


def test_device_parsing_accepts_good_values():
    assert U.resolve_device("cpu") == torch.device("cpu")
    assert U.resolve_device("AUTO").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(U.CLIError, match="CUDA is not available"):
            U.resolve_device("cuda:0")


def test_dtype_fallbacks():
    cpu = torch.device("cpu")
    assert U.resolve_dtype("fp16", cpu) is torch.float32  # no fast fp16 on CPU
    assert U.resolve_dtype("bf16", cpu) is torch.bfloat16
    assert U.resolve_dtype("fp32", cpu) is torch.float32
    with pytest.raises(U.CLIError, match="dtype"):
        U.resolve_dtype("int8", cpu)


def test_atomic_path_leaves_no_partial_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with U.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]

    with U.atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_output_dir_publishes_only_complete_sets(tmp_path):
    final = tmp_path / "images"
    with pytest.raises(RuntimeError):
        with U.output_dir(final) as tmp:
            (tmp / "a.png").write_bytes(b"x")
            raise RuntimeError("crash half way")
    assert list(tmp_path.iterdir()) == []

    with U.output_dir(final) as tmp:  # a new folder appears in one rename
        (tmp / "0.png").write_bytes(b"x")
    assert final.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's private 0700
    # the record of what was written sits beside the folder, not in it (graders list it)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".images.hw2-outputs.json", "images"]
    assert [p.name for p in final.iterdir()] == ["0.png"]


def _user_files(final):
    final.mkdir()
    (final / "keep.json").write_text("1")
    (final / "sub").mkdir()
    (final / "sub" / "keep.txt").write_text("2")


def test_output_dir_replaces_only_what_this_project_wrote(tmp_path):
    final = tmp_path / "out"
    _user_files(final)
    (final / "2.png").write_bytes(b"user")  # output-like, but the user's
    with U.output_dir(final, ["0.png", "1.png", "figures"]) as tmp:
        for name in ("0.png", "1.png"):
            (tmp / name).write_bytes(b"run1")
        (tmp / "figures").mkdir()
        (tmp / "figures" / "a.png").write_bytes(b"run1")
    with pytest.raises(RuntimeError):  # a failed run changes nothing
        with U.output_dir(final, ["0.png"]) as tmp:
            (tmp / "0.png").write_bytes(b"new")
            raise RuntimeError("crash")
    assert (final / "0.png").read_bytes() == b"run1"

    with U.output_dir(final, ["0.png", "figures"]) as tmp:  # the second run writes less
        (tmp / "0.png").write_bytes(b"run2")
        (tmp / "figures").mkdir()
        (tmp / "figures" / "b.png").write_bytes(b"run2")
    assert sorted(p.name for p in final.iterdir()) == [
        "0.png",
        "1.png",
        "2.png",
        "figures",
        "keep.json",
        "sub",
    ]
    assert (final / "0.png").read_bytes() == b"run2"
    assert (final / "1.png").read_bytes() == b"run1"  # not written this time: left in place
    assert (final / "2.png").read_bytes() == b"user"
    assert [p.name for p in (final / "figures").iterdir()] == ["b.png"]  # its own folder, whole
    assert (final / "keep.json").read_text() == "1"
    assert (final / "sub" / "keep.txt").read_text() == "2"
    # no staging or trash left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.hw2-outputs.json", "out"]


def test_output_dir_refuses_to_replace_the_users_files(tmp_path):
    final = tmp_path / "out"
    _user_files(final)
    for name in ("0.png", "1.png"):
        (final / name).write_bytes(b"user")
    with pytest.raises(
        U.CLIError, match=r"2 files in .*out that no earlier run .* \(first: 0.png\)"
    ):
        with U.output_dir(final, ["0.png", "1.png", "9.png"]):
            raise AssertionError("refused before the work")
    with pytest.raises(U.CLIError, match="keep.json"):  # names unknown before: refused at publish
        with U.output_dir(final) as tmp:
            (tmp / "keep.json").write_text("new")
    with pytest.raises(U.CLIError, match=r"sub is a folder this project did not write"):
        with U.output_dir(final, ["sub"], overwrite=True):  # never a folder of the user's
            pass
    assert (final / "0.png").read_bytes() == b"user"
    assert (final / "keep.json").read_text() == "1"
    assert (final / "sub" / "keep.txt").read_text() == "2"

    with U.output_dir(final, ["0.png"], overwrite=True) as tmp:
        (tmp / "0.png").write_bytes(b"new")
    assert (final / "0.png").read_bytes() == b"new"
    assert (final / "1.png").read_bytes() == b"user"


def test_an_output_changed_since_it_was_written_is_the_users(tmp_path):
    final = tmp_path / "out"
    with U.output_dir(final, ["0.png", "1.png"]) as tmp:
        for name in ("0.png", "1.png"):
            (tmp / name).write_bytes(b"run1")
    (final / "0.png").write_bytes(b"edited by hand")
    (final / "1.png").unlink()
    (final / "1.png").write_bytes(b"run1")  # same bytes, another file
    with pytest.raises(U.CLIError, match=r"2 files .* \(first: 0.png\)"):
        with U.output_dir(final, ["0.png", "1.png"]):
            pass
    assert (final / "0.png").read_bytes() == b"edited by hand"


def test_output_dir_refuses_a_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("x")
    with pytest.raises(U.CLIError, match="not a folder"):
        with U.output_dir(target):
            raise AssertionError("the block must not run")
    assert target.read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("context", [U.atomic_path, U.output_dir])
def test_write_errors_name_the_path_the_user_gave(context, tmp_path):
    """A failure on the hidden temporary (a full disk, say) is reported against the final path."""
    import errno

    final = tmp_path / "pred.csv"
    with pytest.raises(U.CLIError) as info:
        with context(final) as tmp:
            raise OSError(
                errno.ENOSPC, "No space left on device", str(tmp / "x" if tmp.is_dir() else tmp)
            )
    assert str(info.value) == f"cannot write {final} (No space left on device)"
    assert list(tmp_path.iterdir()) == []


def test_save_images_refuses_non_finite_pixels(tmp_path):
    x = torch.zeros(2, 3, 2, 2)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(U.CLIError, match=r"1 of 2 images \(first: b.png\) hold NaN"):
        U.save_images(x, [tmp_path / "a.png", tmp_path / "b.png"])
    assert list(tmp_path.iterdir()) == []


def test_save_images_round_trip(tmp_path):
    from PIL import Image

    x = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(2, 3, 2, 2)
    U.save_images(x, [tmp_path / "a.png", tmp_path / "b.png"])
    img = Image.open(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (2, 2)
    assert img.getpixel((0, 0)) == (0, 128, 255)  # (-1, 0, 1) -> 0, 127.5 rounds to 128, 255
    U.save_grid(
        torch.zeros(6, 1, 4, 4), tmp_path / "grid.png", nrow=3, value_range=(0, 1), padding=1
    )
    assert Image.open(tmp_path / "grid.png").size == (3 * 5 + 1, 2 * 5 + 1)


def test_run_cli_turns_user_errors_into_one_line(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(
        "import sys\nfrom hw2_utils import run_cli, CLIError, require_file\n"
        "def main():\n"
        "    if sys.argv[1] == 'cli': raise CLIError('bad thing')\n"
        "    require_file(sys.argv[2], 'weights', 'see README')\n"
        "run_cli(main)\n"
    )
    for args, expected in [
        (["cli"], "tool.py: error: bad thing"),
        (["file", "/nope.pt"], "tool.py: error: weights not found: /nope.pt (see README)"),
    ]:
        r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
        assert r.returncode == 2
        assert r.stderr.strip() == expected


def test_ensure_writable_dir_rejects_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(U.CLIError, match="not writable"):
        U.ensure_writable_dir(f / "sub")


def test_load_cifar10_reads_the_three_layouts_alike(tmp_path):
    """The shared slice, the official pickles written from it, and the whole JPEG copy."""
    import pickle

    import numpy as np
    from conftest import require_shared

    slice_path = require_shared("cifar10", "cifar10_slice.npz")
    images, labels = U.load_cifar10(slice_path, "test")
    assert (
        images.shape == (1017, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    )

    batches = tmp_path / "cifar-10-batches-py"  # torchvision's layout, holding the slice's pixels
    batches.mkdir()
    train_images, train_labels = U.load_cifar10(slice_path, "train")
    parts = {
        "test_batch": (images, labels),
        **{f"data_batch_{i + 1}": (train_images[i::5], train_labels[i::5]) for i in range(5)},
    }
    for name, (x, y) in parts.items():
        with open(batches / name, "wb") as f:
            pickle.dump(
                {b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"labels": y.tolist()}, f
            )
    for path in (batches, tmp_path):  # the folder itself or torchvision's root above it
        x, y = U.load_cifar10(path, "test", limit=100)
        assert np.array_equal(x, images[:100]) and np.array_equal(y, labels[:100])
    x, y = U.load_cifar10(batches, "train")
    assert np.array_equal(x, np.concatenate([train_images[i::5] for i in range(5)]))

    full = require_shared("cifar10_full")
    x, y = U.load_cifar10(full, "test", limit=50)
    assert x.shape == (50, 32, 32, 3) and x.std() > 20  # decoded pixels, not a constant
    with np.load(full / "test.npz") as z:
        assert np.array_equal(y, z["labels"][:50]) and tuple(z["classes"]) == U.CIFAR10_CLASSES


def test_load_cifar10_bad_inputs_are_cli_errors(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    for path, message in (
        (tmp_path / "absent.npz", "not found"),
        (tmp_path / "text.npz", "not readable CIFAR-10"),
        (tmp_path, "test archive not found"),
    ):
        with pytest.raises(U.CLIError, match=message):
            U.load_cifar10(path, "test")


def test_the_longest_name_check_output_path_allows_can_be_published_twice(tmp_path):
    """Its staging folder and its record beside it must fit the 255-byte limit too."""
    final = tmp_path / ("c" * (255 - U.cli.STAGING_NAME_EXTRA))
    U.check_output_path(final, folder=True)
    for text in ("first", "second"):
        with U.output_dir(final, ["a.txt"]) as tmp:
            (tmp / "a.txt").write_text(text)
    assert (final / "a.txt").read_text() == "second"


def test_warmup_cosine_lr_is_each_problems_schedule():
    """P6's (cosine to zero), P1's (to 10% of the peak) and P2's (floor 1: warmup, then constant)."""
    from hw2_utils import warmup_cosine_lr

    assert [warmup_cosine_lr(s, 10, 4, 1.0) for s in (0, 3, 4)] == [0.25, 1.0, 1.0]
    assert warmup_cosine_lr(7, 10, 4, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert warmup_cosine_lr(10, 10, 4, 2.0, floor=0.1) == pytest.approx(0.2)
    assert {warmup_cosine_lr(s, 10, 4, 2.0, floor=1.0) for s in range(3, 50)} == {2.0}


def test_help_shows_every_options_default():
    import argparse

    p = argparse.ArgumentParser(formatter_class=U.HelpFormatter, description="usage:\n  x y")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--lr", type=float, default=0.5, help="rate (default %(default)s)")
    p.add_argument("--fast", action="store_true", help="a flag")
    p.add_argument("--name", help="no default")
    text = " ".join(p.format_help().split())
    assert "usage:\n  x y" in p.format_help()  # the description as written
    assert "--seed SEED (default: 0)" in text and "DDIM steps (default: 10)" in text
    assert "--lr LR rate (default 0.5) --fast" in text  # its own wording, not a second one
    assert "a flag --name NAME no default" in text
