"""The truncation trick of P4's sampling (pipeline.sample_z): without it z is the seed's plain
normal draw (run.sh's bytes unchanged), with it z follows the normal truncated to [-T, T]
(checked against scipy), a checkpoint can carry it, and bench.p4_gan truncation chooses it on
training faces and writes it into the file. Also bench.p4_gan select and final, which share its
scoring (train_reference, score)."""

from __future__ import annotations

import json

import pytest
import torch
from scipy import stats

from conftest import require_shared
from hw2_utils import make_generator
from p4_gan import infer
from p4_gan.models import GANConfig, Generator
from p4_gan.pipeline import load_generator, sample_z, save_generator, with_standing_stats


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("p4_truncation") / "generator.pt"
    generator = with_standing_stats(Generator(GANConfig(g_channels=4, d_channels=4)))
    save_generator(path, generator, {"model": "improved", "step": 0})
    return path


def test_no_truncation_is_the_plain_normal_draw_of_the_seed():
    assert torch.equal(sample_z(5, 100, 2022), torch.randn(5, 100, generator=make_generator(2022)))


def test_truncated_z_is_the_truncated_normal_and_a_function_of_the_seed():
    z = sample_z(200, 100, seed=7, truncation=0.75)
    assert z.abs().max() <= 0.75 and torch.equal(z, sample_z(200, 100, seed=7, truncation=0.75))
    plain = sample_z(200, 100, seed=7)
    inside = plain.abs() <= 0.75
    assert torch.equal(z[inside], plain[inside])  # only the entries outside are drawn again
    test = stats.kstest(z.flatten().numpy(), stats.truncnorm(-0.75, 0.75).cdf)
    assert test.pvalue > 0.01, test
    assert stats.kstest(plain.flatten().numpy(), stats.truncnorm(-0.75, 0.75).cdf).pvalue < 1e-6


def test_infer_uses_the_checkpoints_truncation_unless_told(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pt"
    blob = torch.load(checkpoint, weights_only=True)
    torch.save({**blob, "truncation": 0.5}, truncated)
    infer.main([str(tmp_path / "plain"), "--checkpoint", str(checkpoint), "--n", "3"])
    infer.main([str(tmp_path / "carried"), "--checkpoint", str(truncated), "--n", "3"])
    infer.main(
        [str(tmp_path / "told"), "--checkpoint", str(checkpoint), "--n", "3", "--truncation", "0.5"]
    )
    infer.main(
        [str(tmp_path / "off"), "--checkpoint", str(truncated), "--n", "3", "--truncation", "0"]
    )

    def read(name):
        return [(tmp_path / name / f"{k:04d}.png").read_bytes() for k in range(3)]

    assert read("carried") == read("told") != read("plain") == read("off")


@pytest.mark.filterwarnings(
    "ignore:Matrix is singular"
)  # FID of 4 images: a rank-deficient covariance
def test_bench_chooses_on_training_faces_and_ships_the_choice(checkpoint, tmp_path):
    from bench import p4_gan as bench

    faces = require_shared("hw2_data", "face")
    generator = tmp_path / "generator.pt"
    generator.write_bytes(checkpoint.read_bytes())
    argv = ["truncation", str(generator), "--data", str(faces), "--thresholds", "1.0", "0.5"]
    argv += ["--n", "4", "--fid-ref-n", "6", "--device", "cpu", "--ship"]
    record = bench.main([*argv, "--json", str(tmp_path / "truncation.json")])
    assert [row["truncation"] for row in record["rows"]] == [None, 1.0, 0.5]
    assert all(row["total"] == 4 and 0 <= row["face_rate"] <= 1 for row in record["rows"])
    best = min(record["rows"], key=lambda row: row["train_fid"])
    assert record["chosen"] == best["truncation"] and record["fid_ref_n"] == 6
    assert load_generator(generator)[1].get("truncation") == record["chosen"]
    assert json.loads((tmp_path / "truncation.json").read_text())["chosen"] == record["chosen"]


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # FID of a few images
def test_bench_select_then_final_score_what_run_sh_writes(tmp_path):
    """select picks a snapshot by training-face FID; final scores run.sh's images of it against
    val (with the truncation the file carries) beside the real-face floor."""
    from bench import p4_gan as bench
    from p4_gan import train

    faces = require_shared("hw2_data", "face")
    run = tmp_path / "runs" / "improved"
    argv = ["--preset", "improved", "--data", str(faces), "--out", str(run)]
    argv += "--g-channels 4 --d-channels 4 --batch-size 8 --epochs 2 --snapshot-every 1".split()
    train.main([*argv, *"--sample-every 0 --fid-every 0 --device cpu".split()])
    fid_args = ["--data", str(faces), "--fid-n", "4", "--fid-ref-n", "6", "--device", "cpu"]
    selected = bench.main(["select", str(run), *fid_args])["runs"]["improved"]
    assert [row["epoch"] for row in selected["snapshots"]] == [1, 2]
    assert selected["best"] == min(selected["snapshots"], key=lambda row: row["fid"])
    assert load_generator(run / "generator_best.pt")[1]["epoch"] == selected["best"]["epoch"]

    out = tmp_path / "final"
    final = bench.main(
        ["final", "--runs", str(tmp_path / "runs"), "--models", "improved", "--data", str(faces)]
        + ["--n", "4", "--out", str(out), "--device", "cpu"]
    )
    improved = final["models"]["improved"]
    assert improved["best_epoch"] == selected["best"]["epoch"] and improved["total"] == 4
    assert improved["truncation"] is None and final["real_train"]["total"] == 4
    assert sorted(p.name for p in (out / "improved").iterdir()) == [
        f"{k:04d}.png" for k in range(4)
    ]
