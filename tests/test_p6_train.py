"""P6 training on real CIFAR-10 images: the loss falls, the test set is scored once after
the last epoch, a resumed run ends bit-identical to an uninterrupted one, ViT fine-tuning
leaves frozen blocks untouched, and infer.py / cam.py / aug_study.py write their files."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import interrupted_at_call, require_shared
from hw2_utils import CLIError, run_cli, warmup_cosine_lr
from p6_classification import aug_study, cam, infer, train, vit_finetune
from p6_classification.augment import build_preset
from p6_classification.data import CIFAR_MEAN, CIFAR_STD, load_cifar
from p6_classification.models import ResNet18, build_model

SMALL = [
    "--limit",
    "200",
    "--width",
    "8",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--aug",
    "flip_crop",
]


@pytest.fixture(scope="module")
def slice_path():
    return str(require_shared("cifar10", "cifar10_slice.npz"))


@pytest.fixture(scope="module")
def trained(slice_path, tmp_path_factory):
    """An uninterrupted 2-epoch run, recording every evaluate() call's set size."""
    out = tmp_path_factory.mktemp("p6") / "a"
    calls, real = [], train.evaluate

    def spy(model, images, labels, *rest):
        calls.append(len(labels))
        return real(model, images, labels, *rest)

    train.evaluate = spy
    try:
        result = train.main(["--data", slice_path, *SMALL, "--epochs", "2", "--out", str(out)])
    finally:
        train.evaluate = real
    return out, result, calls


def test_loss_falls_on_a_real_batch(slice_path):
    cifar = load_cifar(slice_path)
    preset = build_preset("normalize", CIFAR_MEAN, CIFAR_STD)
    x, y = preset.eval(cifar.train_images[:64]), cifar.train_labels[:64]
    torch.manual_seed(0)
    model = ResNet18(10, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_honest_protocol_and_outputs(trained):
    out, result, calls = trained
    assert calls == [20, 20, 40]  # val after each epoch, the test set once at the very end
    assert (result["train_images"], result["val_images"], result["test_images"]) == (180, 20, 40)
    record = json.loads((out / "result.json").read_text())
    assert record["metrics"]["test_acc"] == result["test_acc"]
    assert (record["finished"], record["step"], record["total_steps"]) == (True, 10, 10)
    with open(out / "log.csv") as f:  # 180 training images in batches of 32: 5 steps an epoch
        rows = list(csv.DictReader(f))
    assert [(row["step"], row["epoch"]) for row in rows] == [("5", "1"), ("10", "2")]
    assert Image.open(out / "curves.png").size[0] > 600  # three panels from log.csv
    assert "--limit 200" in result["command"]
    assert warmup_cosine_lr(0, 100, 10, 0.1) == pytest.approx(0.01)
    assert warmup_cosine_lr(99, 100, 10, 0.1) < 1e-4


def test_warmup_is_capped_at_a_quarter_of_a_short_run(trained, capsys):
    """3 warmup epochs of a 2-epoch run (issue 42) would keep the lr below its peak to the end:
    the warmup is cut to a quarter of the run's 10 steps, with one warning line."""
    assert train.warmup_steps(argparse.Namespace(epochs=2, warmup_epochs=3.0), 5) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: --warmup-epochs 3 is more than 25% of 2 epochs")
    assert train.warmup_steps(argparse.Namespace(epochs=150, warmup_epochs=3.0), 88) == 264
    assert capsys.readouterr().err == ""  # the shipped recipe's 2% warmup stays
    with open(trained[0] / "log.csv") as f:  # the lr at the end of epoch 1 (step 5 of 10)
        lr = float(next(csv.DictReader(f))["lr"])
    assert lr == pytest.approx(warmup_cosine_lr(4, 10, 2, 0.4), abs=1e-5) and lr > 0.3


def test_resumed_run_matches_uninterrupted_run(trained, slice_path, tmp_path, monkeypatch):
    out_a = trained[0]
    args = ["--data", slice_path, *SMALL, "--epochs", "2", "--out", str(tmp_path / "b")]
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", interrupted_at_call(real, 2))  # in epoch 2
    with pytest.raises(KeyboardInterrupt):
        train.main(args)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(train, "evaluate", real)
    train.main(args)
    a = torch.load(out_a / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CLIError, match="another run \\(epochs: 2 there, 3 now\\)"):
        train.main([*args[:-2], "--epochs", "3", "--out", str(tmp_path / "b")])


def test_infer_folder_and_cifar_agree(trained, slice_path, tmp_path, capsys):
    checkpoint = str(trained[0] / "model.pt")
    cifar = load_cifar(slice_path)
    folder = tmp_path / "images"
    folder.mkdir()
    names = [f"img_{i:02d}.png" for i in range(12)]
    for name, image in zip(names, cifar.test_images[:12]):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "y.csv").write_text("not a checkpoint")
    with open(tmp_path / "labels.csv", "w") as f:
        f.write(
            "image_name,label\n"
            + "".join(f"{n},{y}\n" for n, y in zip(names, cifar.test_labels[:12].tolist()))
        )

    accuracy = infer.main(
        [
            str(folder),
            str(tmp_path / "folder.csv"),
            "--checkpoint",
            checkpoint,
            "--labels",
            str(tmp_path / "labels.csv"),
            "--device",
            "cpu",
        ]
    )
    with open(tmp_path / "folder.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image_name"] for r in rows] == names
    predicted = torch.tensor([int(r["label"]) for r in rows])
    assert accuracy == pytest.approx((predicted == cifar.test_labels[:12]).float().mean().item())

    infer.main(
        [slice_path, str(tmp_path / "cifar.csv"), "--checkpoint", checkpoint, "--device", "cpu"]
    )
    with open(tmp_path / "cifar.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1017 and rows[0]["image_name"] == "00000.png"
    assert [int(r["label"]) for r in rows[:12]] == predicted.tolist()  # same pixels, same answers
    assert "accuracy" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            lambda: infer.main(
                [str(folder), str(tmp_path / "x.csv"), "--checkpoint", str(tmp_path / "y.csv")]
            )
        )
    assert exit_info.value.code == 2 and "is not a P6 model.pt" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_vit_finetune_keeps_frozen_blocks_and_cams(slice_path, tmp_path):
    torch.manual_seed(0)
    tiny = {"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2}
    arch = {
        "model": "vit",
        "name": "vit_tiny_patch16_224",
        "img_size": 32,
        "trainable_blocks": 3,
        "timm_kwargs": tiny,
    }
    start = build_model(arch).net.state_dict()
    torch.save(start, tmp_path / "start.pth")
    out = tmp_path / "vit"
    vit_finetune.main(
        [
            "--data",
            slice_path,
            "--limit",
            "100",
            "--batch-size",
            "30",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--weights",
            str(tmp_path / "start.pth"),
            "--vit-name",
            arch["name"],
            "--vit-kwargs",
            json.dumps(tiny),
            "--image-size",
            "32",
            "--trainable-blocks",
            "1",
            "--out",
            str(out),
        ]
    )
    final = torch.load(out / "model.pt", weights_only=True)
    trained = torch.load(out / "last.pt", weights_only=False)["model"]  # the fp32 training state
    assert final["arch"]["trainable_blocks"] == 1
    for name, value in trained.items():
        trainable = name.removeprefix("net.").startswith(("blocks.2.", "norm.", "head."))
        assert torch.equal(value, start[name.removeprefix("net.")]) != trainable, name
        assert final["state_dict"][name].dtype == torch.float16 and torch.equal(
            final["state_dict"][name], value.half()
        )
    assert (
        cam.main(
            [
                "--checkpoint",
                str(out / "model.pt"),
                "--data",
                slice_path,
                "--n",
                "2",
                "--out",
                str(tmp_path / "cam"),
                "--device",
                "cpu",
            ]
        ).name
        == "cam_vit.png"
    )


def test_resnet_cam_figure_and_aug_study(trained, slice_path, tmp_path, monkeypatch):
    path = cam.main(
        [
            "--checkpoint",
            str(trained[0] / "model.pt"),
            "--data",
            slice_path,
            "--n",
            "3",
            "--out",
            str(tmp_path / "cam"),
            "--device",
            "cpu",
        ]
    )
    assert path == tmp_path / "cam" / "cam_resnet18.png"
    with Image.open(path) as figure:
        assert figure.height > figure.width * 0.8  # three rows of image | CAM | Grad-CAM
    study = "--epochs 1 --presets none cutout --spread-preset none --spread-seeds 1 --limit 100"
    study = [
        *study.split(),
        *"--width 8 --batch-size 30 --device cpu".split(),
        "--data",
        slice_path,
    ]
    record = aug_study.main([*study, "--out", str(tmp_path / "aug")])
    assert [r["preset"] for r in record["rows"]] == ["none", "cutout"]
    for row in record["rows"]:
        run = tmp_path / "aug" / "runs" / row["preset"]
        result = json.loads((run / "result.json").read_text())["metrics"]
        assert result["preset"] == row["preset"] and result["test_acc"] == row["test_acc"]
    seed1 = json.loads((tmp_path / "aug" / "runs" / "none_seed1" / "result.json").read_text())
    seed1 = seed1["metrics"]
    assert seed1["command"].endswith(
        "--seed 1 --out " + str(tmp_path / "aug" / "runs" / "none_seed1")
    )
    none, cutout = record["rows"]
    assert record["spread"]["test_acc_spread"] == pytest.approx(
        abs(seed1["test_acc"] - none["test_acc"])
    )
    gap = cutout["test_acc"] - none["test_acc"]
    mark = "" if abs(gap) > record["spread"]["test_acc_spread"] else " (n.s.)"
    table = (tmp_path / "aug" / "aug_study.md").read_text()
    assert (
        f"| cutout | flip_crop + cutout 16x16 | {cutout['val_acc']:.4f} | {cutout['test_acc']:.4f} | {gap:+.4f}{mark} |"
        in table
    )
    assert (tmp_path / "aug" / "aug_study.png").is_file()
    # --jobs: the same runs as separate processes at once (one thread each, as here), the same study
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    parallel = aug_study.main([*study, "--out", str(tmp_path / "aug_jobs"), "--jobs", "3"])

    def scores(rows):
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in rows]

    assert scores(parallel["rows"]) == scores(record["rows"])
    assert scores(parallel["seed_runs"]) == scores(record["seed_runs"])
    assert "epoch 1: train loss" in (tmp_path / "aug_jobs" / "runs" / "none_seed1.log").read_text()


def test_bench_full_scores_a_finished_run_without_training(trained, slice_path, tmp_path):
    """--parts full reads a finished run folder: the run's own numbers are kept, its exported
    model.pt is scored as infer.py loads it on both test sets, nothing in the run changes, and
    a run that --max-seconds stopped early is refused."""
    from bench import p6_classification as bench

    run = trained[0]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    argv = ["--work", str(tmp_path / "work"), "--parts", "full", "--run", str(run)]
    record = bench.main([*argv, "--data", slice_path, "--also-test", slice_path, "--device", "cpu"])
    record = record["full"]
    assert (record["val_acc"], record["test_acc"]) == (
        trained[1]["val_acc"],
        trained[1]["test_acc"],
    )
    model, meta = infer.load_checkpoint(run / "model.pt", torch.device("cpu"))
    cifar = load_cifar(slice_path)
    predicted = infer.predict(model, meta, cifar.test_images, torch.device("cpu"))
    expected = (predicted == cifar.test_labels).float().mean().item()
    assert record["exported_fp16_test_acc"] == {"test": expected, "also_test": expected}
    assert record["also_test"]["test_images"] == 1017
    assert record["also_test"]["test_acc"] == pytest.approx(expected, abs=0.01)  # bf16 in training
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "result.json").write_text(
        json.dumps({"finished": False, "step": 3, "total_steps": 12, "metrics": {}})
    )
    with pytest.raises(CLIError, match="stopped at step 3 of 12"):
        bench.score_run(unfinished, slice_path, slice_path, torch.device("cpu"))


def test_test_time_flip_averages_the_logits_of_each_image_and_its_mirror():
    """A linear model that is not mirror-symmetric: "flip" is the mean of its logits on the image
    and on the mirrored image (so on some images it predicts another class than "none")."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    meta = {
        "preset": "flip_crop",
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "classes": list("abcdefghij"),
    }
    x = build_preset("flip_crop", CIFAR_MEAN, CIFAR_STD, 10).eval(images)
    with torch.no_grad():
        mean_logits = (model(x) + model(torch.flip(x, dims=[3]))) / 2
        assert torch.equal(infer.logits_with_tta(model, x, "none"), model(x))
        assert torch.allclose(infer.logits_with_tta(model, x, "flip"), mean_logits)
    cpu = torch.device("cpu")
    flipped = infer.predict(model, meta, images, cpu, batch_size=16, tta="flip")
    plain = infer.predict(model, meta, images, cpu, batch_size=16)
    assert torch.equal(flipped, mean_logits.argmax(1)) and torch.equal(plain, model(x).argmax(1))
    assert (flipped != plain).any()


def test_bench_tta_chooses_on_val_and_scores_each_test_set_once_with_the_choice(
    trained, slice_path, tmp_path, monkeypatch
):
    from bench import p6_classification as bench

    calls, real = [], bench.predict

    def spy(model, meta, images, device, *rest, tta="none"):
        calls.append((len(images), tta))
        return real(model, meta, images, device, *rest, tta=tta)

    monkeypatch.setattr(bench, "predict", spy)
    final = trained[0] / "model.pt"
    before = final.read_bytes()
    argv = ["--work", str(tmp_path), "--parts", "tta", "--checkpoint", str(final)]
    common = ["--data", slice_path, "--also-test", slice_path, "--limit", "200", "--device", "cpu"]
    record = bench.main([*argv, *common])["tta"]
    n_val, n_test = record["val_images"], record["test_images"]
    assert (n_val, n_test) == (20, 40) and record["also_test"]["test_images"] == 1017
    chosen = record["chosen"]
    assert chosen == ("flip" if record["val_acc"]["flip"] > record["val_acc"]["none"] else "none")
    assert calls == [(n_val, "none"), (n_val, "flip"), (n_test, chosen), (1017, chosen)]
    gain = record["val_flip_fixes"] - record["val_flip_breaks"]
    assert gain == round((record["val_acc"]["flip"] - record["val_acc"]["none"]) * n_val)
    # the official-pixel number is what infer.py prints for the same file and choice
    csv_out = tmp_path / "pred.csv"
    accuracy = infer.main([slice_path, str(csv_out), "--checkpoint", str(final), "--tta", chosen])
    assert record["also_test"]["test_acc"] == pytest.approx(accuracy)
    assert final.read_bytes() == before  # the bench only reads the model


def test_infer_tta_default_is_infer_pys_whatever_the_checkpoint_carries(
    trained, slice_path, tmp_path
):
    """The test-time augmentation is infer.py's default (TTA_DEFAULT, the tta record's choice),
    not a property of the file: a "tta" key in a checkpoint (shipped files once carried one)
    changes nothing."""
    model_pt = trained[0] / "model.pt"
    other = next(tta for tta in infer.TTA if tta != infer.TTA_DEFAULT)
    carrying = tmp_path / "carrying.pt"
    torch.save({**torch.load(model_pt, weights_only=True), "tta": other}, carrying)

    def predictions(checkpoint, *extra) -> list:
        out = tmp_path / "pred.csv"
        argv = [slice_path, str(out), "--checkpoint", str(checkpoint), "--device", "cpu"]
        infer.main([*argv, *extra])
        return out.read_text().splitlines()

    default = predictions(model_pt)
    assert default == predictions(model_pt, "--tta", infer.TTA_DEFAULT) == predictions(carrying)
    assert predictions(carrying, "--tta", other) == predictions(model_pt, "--tta", other) != default
