"""Top-level shell scripts: the checkpoint downloader's hash checks, skipping and
no-partial-file guarantees (on file:// URLs, no network), and usage errors."""

import hashlib
import os
import subprocess
import sys

from conftest import REPO


def _download(tmp_path, table_rows, *args):
    table = tmp_path / "table.tsv"
    table.write_text("# test table\n" + "\n".join("\t".join(r) for r in table_rows) + "\n")
    env = {
        "HW2_CKPT_TABLE": str(table),
        "HW2_CKPT_DIR": str(tmp_path / "ckpt"),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["bash", str(REPO / "hw2_download_ckpt.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_downloader_checks_hash_skips_present_and_leaves_nothing_on_failure(tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(b"weights" * 100)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    rows = [
        ("a.bin", "required", good, src.as_uri()),
        ("b.bin", "optional", "deadbeef", src.as_uri()),
    ]

    r = _download(tmp_path, rows)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ckpt" / "a.bin").read_bytes() == src.read_bytes()
    assert "ok (present)" in _download(tmp_path, rows).stdout

    r = _download(tmp_path, rows, "b.bin")  # wrong hash: refused, nothing kept
    assert r.returncode == 2 and "sha256 does not match" in r.stderr
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["a.bin"]

    r = _download(tmp_path, [("c.bin", "required", good, (tmp_path / "missing").as_uri())])
    assert r.returncode == 2 and "nothing was written" in r.stderr
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["a.bin"]


def test_downloader_unknown_name_and_entry_points_usage(tmp_path):
    r = _download(tmp_path, [], "nope")
    assert r.returncode == 2 and "no entry named 'nope'" in r.stderr
    env = {"PATH": "/usr/bin:/bin", "HW2_CKPT_TABLE": str(tmp_path / "missing.tsv")}
    r = subprocess.run(
        ["bash", str(REPO / "hw2_download_ckpt.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    # once exited 0 after the error
    assert r.returncode == 2 and "missing.tsv not found" in r.stderr
    (tmp_path / "a-file").write_text("x")
    r = _download(tmp_path, [("a.bin", "required", "00", "file:///x")])
    env = {
        "PATH": "/usr/bin:/bin",
        "HW2_CKPT_TABLE": str(tmp_path / "table.tsv"),
        "HW2_CKPT_DIR": str(tmp_path / "a-file"),
    }
    r = subprocess.run(
        ["bash", str(REPO / "hw2_download_ckpt.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert (
        r.returncode == 2
        and r.stderr.strip()
        == f"hw2_download_ckpt.sh: error: {tmp_path / 'a-file'} exists and is not a folder"
    )
    for script in ("hw2_1.sh", "hw2_2.sh", "hw2_3.sh"):
        r = subprocess.run(["bash", str(REPO / script)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stderr.startswith("usage:")
    r = subprocess.run(
        ["bash", str(REPO / "get_dataset.sh"), "1999"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "unknown year" in r.stderr


def test_problem_packages_import_from_a_plain_checkout(tmp_path):
    """What hw2_N.sh relies on in a TA's environment: PYTHONPATH=repo root, no install."""
    code = (
        "import importlib.util, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
        "type(f).__module__.lower()]; import stable_diffusion.tokenizer as t, p1_ddpm.model; print(t.__file__)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.strip() == str(REPO / "stable_diffusion" / "tokenizer.py")
