"""Files a user (or someone else) hands the commands are data, never code (issue 32): a pickle
payload in a run folder's last.pt or in a --checkpoint does not run, and a damaged last.pt is
one error line naming the file and the way out."""

from __future__ import annotations

import pickle

import pytest
import torch

from hw2_utils import CLIError, RunFolder, run_cli
from p5_dann import infer as p5_infer


class _Payload:
    """Unpickling this calls Path.write_text(MARKER): proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.write_text, (self.marker, "pwned")


def _hostile(path, marker):
    # torch.save pickles it as is
    torch.save({"identity": {}, "step": 1, "evil": _Payload(marker)}, path)
    return path


def test_a_crafted_last_pt_does_not_run_on_resume(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "run").mkdir()
    _hostile(tmp_path / "run" / "last.pt", marker)
    with pytest.raises(CLIError, match="cannot resume from .*last.pt .*--no-resume"):
        RunFolder(tmp_path / "run", ckpt_every=1).load({})
    assert not marker.exists()
    # the payload is real: a full unpickle would run it
    with open(tmp_path / "run" / "last.pt", "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("content", [b"", b"hello\n", "truncated", "tensor"])
def test_a_damaged_last_pt_is_one_error(tmp_path, content):
    (tmp_path / "run").mkdir()
    last = tmp_path / "run" / "last.pt"
    if content == "truncated":
        torch.save({"identity": {}, "step": 1, "w": torch.zeros(1000)}, last)
        last.write_bytes(last.read_bytes()[:300])
    elif content == "tensor":
        torch.save(torch.zeros(3), last)
    else:
        last.write_bytes(content)
    with pytest.raises(CLIError, match="last.pt"):
        RunFolder(tmp_path / "run", ckpt_every=1).load({})


def test_a_crafted_checkpoint_does_not_run(tmp_path, capsys):
    marker = tmp_path / "marker"
    images = tmp_path / "usps"
    images.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            lambda: p5_infer.main(
                [
                    str(images),
                    str(tmp_path / "out.csv"),
                    "--checkpoint",
                    str(_hostile(tmp_path / "evil.pt", marker)),
                ]
            )
        )
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.csv").exists()


def test_every_torch_load_in_the_project_is_weights_only():
    """A grep, so a new loader cannot slip in a full unpickle of a user-given file."""
    from conftest import REPO

    offenders = []
    for path in REPO.glob("*/*.py"):
        if path.parts[-2] in {"tests", ".venv", "outputs"}:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "weights_only=False" in line or ("pickle.load" in line and "import" not in line):
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders


def test_pickle_payload_helper_is_a_real_payload(tmp_path):
    marker = tmp_path / "m"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_a_crafted_cifar_batch_does_not_run(tmp_path):
    from hw2_utils import load_cifar10

    marker = tmp_path / "marker"
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    with open(batches / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f)
    with pytest.raises(CLIError, match="refusing to load"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()


def test_output_names_too_long_for_the_file_system_are_refused_before_work(tmp_path):
    from hw2_utils import check_output_path

    with pytest.raises(CLIError, match="name too long"):
        check_output_path(tmp_path / ("a" * 240), folder=True)
    with pytest.raises(CLIError, match="name too long"):
        check_output_path(tmp_path / ("b" * 300) / "out.csv", folder=False)
    # long but fits with its staging sibling
    assert check_output_path(tmp_path / ("c" * 200), folder=True)


def test_an_existing_output_folder_that_is_not_writable_is_refused_before_work(tmp_path):
    import os
    from hw2_utils import check_output_path

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that may write anywhere")
        with pytest.raises(CLIError, match="not writable"):
            check_output_path(locked, folder=True)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("damage", ["missing state", "mis-shaped tensor", "missing value"])
def test_a_last_pt_with_the_runs_identity_but_damaged_is_one_error(tmp_path, capsys, damage):
    """Resuming P2's trainer from a last.pt edited by hand: one error line naming the file."""
    from test_train_runs import _case

    case, run = _case("p2", tmp_path), tmp_path / "run"
    case.module.main(case.argv(run, 2))
    state = torch.load(run / "last.pt", weights_only=True)
    if damage == "missing state":
        del state["optimizer"]
    elif damage == "mis-shaped tensor":
        key = next(iter(state["model"]))
        state["model"][key] = torch.zeros(3, 1)
    else:
        del state["step"]
    torch.save(state, run / "last.pt")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: case.module.main(case.argv(run, 4)))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert f"cannot resume from {run / 'last.pt'}" in err[0] and "--no-resume" in err[0]
