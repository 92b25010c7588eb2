"""P6 records: the bench writes its throughput table with command and hardware, and the
report section shows recorded numbers verbatim, flags smoke runs, and names the command
for every missing input without inventing a number."""
from __future__ import annotations

import importlib.util
import json
import re

from conftest import REPO, require_shared
from p6_classification.report import SMOKE, section


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_p6_classification", REPO / "bench" / "p6_classification.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_throughput_record(tmp_path):
    data = require_shared("cifar10", "cifar10_slice.npz")
    argv = ["--data", str(data), "--work", str(tmp_path), "--parts", "throughput", "--throughput-width", "8",
            "--throughput-batch", "4", "--throughput-steps", "1", "--device", "cpu"]
    _bench_module().main(argv)
    record = json.loads((tmp_path / "bench.json").read_text())
    t = record["throughput"]
    assert [(r["dtype"], r["channels_last"]) for r in t["rows"]] == [
        ("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)]
    assert all(r["images_per_s"] > 0 for r in t["rows"])
    assert t["command"] == "python bench/p6_classification.py " + " ".join(argv) and "CPU" in t["hardware"]
    assert set(record) == {"throughput"}  # parts not run are not written


def test_section_missing_inputs_name_commands_and_invent_nothing(tmp_path):
    text = section(tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith("## P6: ")
    assert [line for line in lines if line.startswith("#")][1:] == [
        "### Training throughput on the CPU", "### ResNet-18 on the shared CIFAR-10 slice",
        "### Augmentation study on the slice", "### Full CIFAR-10 (GPU recipes)", "### Class activation maps"]
    for part in ("throughput", "slice", "aug"):
        assert f"python bench/p6_classification.py --work {tmp_path}/p6 --parts {part}" in text
    assert "python p6_classification/train.py --data data/cifar10 --download" in text
    assert "python p6_classification/vit_finetune.py" in text and "python p6_classification/cam.py" in text
    assert not re.search(r"\d\.\d", text) and "%" not in text  # no accuracy without a record


def test_section_shows_recorded_numbers(tmp_path):
    d = tmp_path / "p6"
    (d / "aug").mkdir(parents=True)
    run = {"command": "python p6_classification/train.py --data X", "hardware": "Test GPU", "world_size": 2,
           "arch": {"model": "resnet18", "stem": "cifar", "width": 64}, "preset": "cutout", "epochs": 9,
           "precision": "torch.bfloat16", "train_images": 4577, "val_images": 508, "test_images": 1017,
           "val_acc": 0.8123, "test_acc": 0.7987, "train_seconds": 654.0}
    bench = {"throughput": {"command": "python bench/p6_classification.py --parts throughput", "hardware": "Test CPU",
                            "width": 64, "batch": 32, "steps": 2,
                            "rows": [{"dtype": "float32", "channels_last": True, "images_per_s": 12.34}]},
             "slice": {**run, "bench_command": "python bench/p6_classification.py --parts slice --subset 300"}}
    (d / "bench.json").write_text(json.dumps(bench))
    (d / "aug" / "aug_study.json").write_text(json.dumps({
        "command": "python p6_classification/aug_study.py --epochs 15", "hardware": "Test CPU", "arch": run["arch"],
        "epochs": 15, "train_images": 4577, "val_images": 508, "test_images": 1017,
        "rows": [{"preset": "flip", "val_acc": 0.5551, "test_acc": 0.5432, "train_seconds": 100.4}]}))
    (d / "resnet18").mkdir()
    (d / "resnet18" / "result.json").write_text(json.dumps(run))
    text = section(tmp_path)
    assert "| float32 | channels_last | 12.3 |" in text and "on Test CPU" in text
    assert "| 0.8123 | 0.7987 | 654 s |" in text
    assert SMOKE in text.split("### ResNet-18 on the shared")[1].split("###")[0]  # the slice record is a smoke run
    assert SMOKE not in text.split("### Training throughput")[1].split("###")[0]
    assert "| flip | random horizontal flip | 0.5551 | 0.5432 | 100 s |" in text
    assert "val acc 0.8123, test acc 0.7987 (final epoch), 10.9 min training" in text
    assert "- vit: _missing: run `python p6_classification/vit_finetune.py" in text
