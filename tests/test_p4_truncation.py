"""The truncation trick of P4's sampling (pipeline.sample_z): without it z is the seed's plain
normal draw (run.sh's bytes unchanged), with it z follows the normal truncated to [-T, T]
(checked against scipy), infer.py's default is the record's choice whatever a checkpoint
carries, and bench.p4_gan truncation measures each T on training faces without touching the
file. Also p4_gan/select_snapshot.py and bench.p4_gan final, which share its scoring
(training_face_reference, score)."""

from __future__ import annotations

import json

import pytest
import torch
from scipy import stats

from conftest import REPO, require_shared
from hw2_utils import CLIError, make_generator
from p4_gan import infer, select_snapshot
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


def test_infer_truncation_is_infer_pys_default_whatever_the_checkpoint_carries(
    checkpoint, tmp_path
):
    """--truncation defaults to infer.TRUNCATION (none: z plain, as p4_truncation.json chose); a
    "truncation" key in a generator file changes nothing, --truncation T does, 0 is none."""
    carrying = tmp_path / "carrying.pt"
    torch.save({**torch.load(checkpoint, weights_only=True), "truncation": 0.5}, carrying)

    def images(name, generator, *extra):
        infer.main([str(tmp_path / name), "--checkpoint", str(generator), "--n", "3", *extra])
        return [(tmp_path / name / f"{k:04d}.png").read_bytes() for k in range(3)]

    plain = images("plain", checkpoint)
    assert infer.TRUNCATION is None and images("carrying", carrying) == plain
    assert images("off", carrying, "--truncation", "0") == plain
    assert images("told", checkpoint, "--truncation", "0.5") != plain


def test_the_truncation_default_is_what_its_record_chose():
    """Shipping is by hand: infer.py's default must follow the committed record it points at."""
    record = json.loads((REPO / "p4_gan" / "checkpoints" / "p4_truncation.json").read_text())
    assert infer.TRUNCATION == record["chosen"]


@pytest.mark.filterwarnings(
    "ignore:Matrix is singular"
)  # FID of 4 images: a rank-deficient covariance
def test_bench_chooses_on_training_faces_and_leaves_the_file_alone(checkpoint, tmp_path):
    from bench import p4_gan as bench

    faces = require_shared("hw2_data", "face")
    generator = tmp_path / "generator.pt"
    generator.write_bytes(checkpoint.read_bytes())
    argv = ["truncation", str(generator), "--data", str(faces), "--thresholds", "1.0", "0.5"]
    argv += ["--n", "4", "--fid-ref-n", "6", "--device", "cpu"]
    record = bench.main([*argv, "--json", str(tmp_path / "truncation.json")])
    assert [row["truncation"] for row in record["rows"]] == [None, 1.0, 0.5]
    assert all(row["total"] == 4 and 0 <= row["face_rate"] <= 1 for row in record["rows"])
    best = min(record["rows"], key=lambda row: row["train_fid"])
    assert record["chosen"] == best["truncation"] and record["fid_ref_n"] == 6
    assert generator.read_bytes() == checkpoint.read_bytes()  # the bench only measures
    assert json.loads((tmp_path / "truncation.json").read_text())["chosen"] == record["chosen"]


def test_select_snapshot_chooses_the_lowest_fid_the_earliest_of_equals():
    rows = [{"epoch": e, "fid": f} for e, f in ((10, 50.0), (20, 30.0), (30, 40.0), (40, 30.0))]
    assert select_snapshot.choose(rows) == {"epoch": 20, "fid": 30.0}


def test_select_snapshot_writes_the_lowest_fid_snapshots_run_folder(
    checkpoint, tmp_path, monkeypatch
):
    """A constructed run: three snapshots whose FIDs are known (the measurement replaced by a
    table keyed on a weight set to each snapshot's epoch); the run folder select_snapshot
    writes holds the lowest's bytes as model.pt, every row in fid.csv and result.json, and
    RUN's log.csv."""
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    generator, _ = load_generator(checkpoint)
    fid_of_epoch = {10: 80.0, 20: 55.5, 30: 61.25}
    for epoch in fid_of_epoch:
        with torch.no_grad():
            next(generator.parameters()).flatten()[0] = epoch
        path = run / "snapshots" / f"generator_epoch{epoch:04d}.pt"
        save_generator(path, generator, {"model": "improved", "step": 3 * epoch, "epoch": epoch})
    (run / "log.csv").write_text("step,d_loss\n1,0.5\n")
    calls = []

    def measured(generator, extractor, reference, n, seed, device):
        calls.append((n, seed, reference))
        return fid_of_epoch[round(next(generator.parameters()).flatten()[0].item())]

    monkeypatch.setattr(select_snapshot, "measure_fid", measured)
    monkeypatch.setattr(
        select_snapshot, "training_face_reference", lambda data, n, *rest: (None, n, "stats")
    )
    out = tmp_path / "selected"
    result = select_snapshot.main([str(run), "--data", "D", "--fid-n", "7", "--out", str(out)])
    assert calls == [(7, 0, "stats")] * 3
    rows = result["metrics"]["rows"]
    assert [(row["epoch"], row["fid"]) for row in rows] == list(fid_of_epoch.items())
    assert result["metrics"]["chosen"]["epoch"] == 20 and result["finished"]
    assert (out / "model.pt").read_bytes() == (
        run / "snapshots" / "generator_epoch0020.pt"
    ).read_bytes()
    assert (out / "log.csv").read_bytes() == (run / "log.csv").read_bytes()
    assert (out / "fid.csv").read_text().splitlines() == [
        "step,epoch,fid",
        "30,10,80.0000",
        "60,20,55.5000",
        "90,30,61.2500",
    ]
    assert json.loads((out / "result.json").read_text()) == result
    with pytest.raises(CLIError, match="another folder"):
        select_snapshot.main([str(run), "--data", "D", "--out", str(run)])


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # FID of a few images
def test_select_snapshot_then_bench_final_score_what_run_sh_writes(tmp_path):
    """A real tiny run: select_snapshot scores every snapshot on training faces and writes the
    lowest's run folder; bench final scores run.sh's images of its model.pt against val beside the
    real-face floor, and reads the choice back from that folder."""
    from bench import p4_gan as bench
    from p4_gan import train

    faces = require_shared("hw2_data", "face")
    run = tmp_path / "train" / "improved"
    argv = ["--preset", "improved", "--data", str(faces), "--out", str(run)]
    argv += "--g-channels 4 --d-channels 4 --batch-size 8 --epochs 2 --snapshot-every 1".split()
    train.main([*argv, *"--sample-every 0 --fid-every 0 --device cpu".split()])
    selected = tmp_path / "runs" / "improved"
    fid_args = ["--data", str(faces), "--fid-n", "4", "--fid-ref-n", "6", "--device", "cpu"]
    result = select_snapshot.main([str(run), *fid_args, "--out", str(selected)])
    rows, chosen = result["metrics"]["rows"], result["metrics"]["chosen"]
    assert [row["epoch"] for row in rows] == [1, 2] and chosen == select_snapshot.choose(rows)
    assert result["recipe"]["fid_ref_n"] == 6
    model = selected / "model.pt"
    assert model.read_bytes() == (run / "snapshots" / chosen["file"]).read_bytes()

    out = tmp_path / "final"
    final = bench.main(
        ["final", "--runs", str(tmp_path / "runs"), "--models", "improved", "--data", str(faces)]
        + ["--n", "4", "--out", str(out), "--device", "cpu"]
    )
    improved = final["models"]["improved"]
    assert improved["best_epoch"] == chosen["epoch"] and improved["total"] == 4
    assert improved["best_train_fid"] == pytest.approx(chosen["fid"], abs=1e-4)
    assert improved["truncation"] is infer.TRUNCATION and final["real_train"]["total"] == 4
    assert sorted(p.name for p in (out / "improved").iterdir()) == [
        f"{k:04d}.png" for k in range(4)
    ]
