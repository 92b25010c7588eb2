"""report/build.py against malformed records (issue 32): a record that is not JSON, not an
object, or lacks the fields its section renders is one error naming the file; an absent record
is named with the command that writes it. Before, some sections showed a broken record as "not
produced yet" and others crashed with a traceback."""

from __future__ import annotations

import importlib
import json

import pytest

from hw2_utils import CLIError, run_cli
from report import build

# (problem package, its RUNS_DIR sub-folder, a record its section reads there)
RECORDS = [
    ("p1_ddpm", "p1", "p1_bench.json"),
    ("p1_ddpm", "p1", "p1_steps.json"),
    ("p1_ddpm", "p1", "p1_speed.json"),
    ("p1_ddpm", "p1", "p1_cfg_sweep.json"),
    ("p1_ddpm", "p1", "p1_fresh_seed.json"),
    ("p2_ddim", "p2", "analysis.json"),
    ("p2_ddim", "p2", "mse.json"),
    ("p2_ddim", "p2", "speed.json"),
    ("p2_ddim", "p2", "cost.json"),
    ("p3_textual_inversion", "p3", "clip_zeroshot.json"),
    ("p3_textual_inversion", "p3", "clip_zeroshot_ensemble.json"),
    ("p4_gan", "p4", "final.json"),
    ("p4_gan", "p4", "cost.json"),
    ("p4_gan", "p4", "truncation.json"),
    ("p5_dann", "p5", "p5_bench.json"),
    ("p6_classification", "p6", "bench.json"),
    ("p6_classification", "p6", "aug/aug_study.json"),
    ("p6_classification", "p6", "cam/deletion_resnet18.json"),
    ("p6_classification", "p6", "vit/result.json"),
    ("p7_clip", "p7", "similarity/similarity.json"),
    ("p7_clip", "p7", "zeroshot/zeroshot.json"),
    ("p7_clip", "p7", "retrieval/retrieval.json"),
    ("p7_clip", "p7", "robustness/robustness.json"),
    ("p7_clip", "p7", "bench.json"),
    ("p7_clip", "p7", "probe/ViT-B-32/result.json"),
    ("p7_clip", "p7", "maskclip/ViT-B-16/maskclip.json"),
    ("p8_controlnet", "p8", "p8_bench.json"),
]
# What each bad record holds: not JSON, JSON but not an object, an object whose fields have the wrong type
BAD = {
    "garbage": "garbage\n",
    "list": "[]\n",
    "wrong types": json.dumps(
        {
            key: 7
            for key in (
                "rows",
                "results",
                "models",
                "maps",
                "accuracy",
                "seconds",
                "levels",
                "images",
                "classes",
                "tiny_cpu",
                "real_train",
                "val_accuracy",
                "zero_shot_accuracy",
                "sampling_seconds",
                "presets",
                "throughput",
                "full",
                "curves",
                "success",
                "failure",
                "n",
                "command",
                "hardware",
                "target",
                "chosen",
            )
        }
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("package, sub, record", RECORDS, ids=[f"{s}/{r}" for _, s, r in RECORDS])
def test_a_malformed_record_is_an_error_naming_it(tmp_path, package, sub, record, kind):
    path = tmp_path / sub / record
    path.parent.mkdir(parents=True)
    path.write_text(BAD[kind])
    section = importlib.import_module(f"{package}.report").section
    try:
        section(tmp_path)
    except CLIError as e:
        assert str(path) in str(e)
        return
    # a section may skip fields it
    assert kind == "wrong types", f"{path} holding {kind} rendered without an error"
    # does not know about; it must not have crashed with anything but a CLIError, which reaching here shows


def test_build_names_the_bad_record_in_one_error_line(tmp_path, capsys):
    (tmp_path / "runs" / "p2").mkdir(parents=True)
    # P2 once showed a broken cost.json as "not produced yet"
    (tmp_path / "runs" / "p2" / "cost.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            lambda: build.main(
                [
                    "--runs",
                    str(tmp_path / "runs"),
                    "--markdown",
                    str(tmp_path / "out" / "RESULTS.md"),
                    "--pdf",
                    str(tmp_path / "out" / "report.pdf"),
                ]
            )
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [
        line for line in err.splitlines() if str(tmp_path / "runs" / "p2" / "cost.json") in line
    ]
    assert not (tmp_path / "out").exists()
