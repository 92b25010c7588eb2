"""infer.py / hw2_3.sh on a tiny SD: the output tree for any json, seeded bytes, learned
tokens round-tripping through learned_embeds.safetensors, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from hw2_utils import CLIError
from p3_textual_inversion import infer
from p3_textual_inversion.embeddings import add_tokens, learned_rows, load_embeds, save_embeds
from stable_diffusion.tiny import TEXT_DIM, build_tiny_sd, save_compvis_file, save_diffusers_folder

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = {
    "0": {
        "token_name": "<new1>",
        "prompt": ["A <new1> on a hill.", "A <new1> next to a <new2>.", "A plain dog."],
    },
    "cat": {
        "token_name": "<new2>",
        "prompt": [
            "Paris in the style of <new2>.",
            "A <new1> in the style of <new2>.",
            "Tokyo in the style of <new2>.",
        ],
    },
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("p3_infer")
    sd = build_tiny_sd(seed=0)
    folder = save_diffusers_folder(sd, root / "sd")
    ckpt = save_compvis_file(sd, root / "tiny.ckpt")
    g = torch.Generator().manual_seed(0)
    vectors = {t: torch.randn(TEXT_DIM, generator=g) for t in ("<new1>", "<new2>")}
    save_embeds(root / "embeds.safetensors", vectors, {"step": 7})
    (root / "input.json").write_text(json.dumps(CONCEPTS))
    return root, folder, ckpt, vectors


def _run(setup, out, *extra, json_path=None):
    root, folder, ckpt, _ = setup
    infer.main(
        [
            str(json_path or root / "input.json"),
            str(out),
            str(ckpt),
            "--sd-config",
            str(folder),
            "--embeds",
            str(root / "embeds.safetensors"),
            "--steps",
            "2",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_output_tree_for_two_concepts_by_three_prompts(setup, tmp_path):
    _run(setup, tmp_path / "out", "--batch-size", "25")
    expected = {
        f"{key}/{p}/source{key}_prompt{p}_{i}.png"
        for key in CONCEPTS
        for p in range(3)
        for i in range(25)
    }
    written = {
        str(f.relative_to(tmp_path / "out"))
        for f in (tmp_path / "out").rglob("*")
        if f.is_file() and not f.name.startswith(".")
    }
    assert written == expected
    with Image.open(tmp_path / "out" / "cat" / "1" / "sourcecat_prompt1_24.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def test_a_shorter_input_leaves_earlier_prompt_folders_and_says_so(setup, tmp_path, capsys):
    out = tmp_path / "out"
    _run(setup, out, "--n", "1")
    shorter = {key: {**c, "prompt": c["prompt"][:1]} for key, c in CONCEPTS.items()}
    (tmp_path / "short.json").write_text(json.dumps(shorter))
    capsys.readouterr()
    _run(setup, out, "--n", "1", json_path=tmp_path / "short.json")
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert [n.split(" also holds prompt folders ")[1].split(" of ")[0] for n in notes] == [
        "1, 2",
        "1, 2",
    ]
    assert (out / "cat" / "2" / "sourcecat_prompt2_0.png").is_file()  # the user's to remove


def test_same_bytes_whatever_the_json_around_the_prompt(setup, tmp_path):
    single = tmp_path / "single.json"
    single.write_text(
        json.dumps({"0": {"token_name": "<new1>", "prompt": ["A <new1> next to a <new2>."]}})
    )
    _run(setup, tmp_path / "a", "--n", "4", json_path=single)
    _run(setup, tmp_path / "b", "--n", "4", "--batch-size", "4")  # the full json, other batching
    for i in range(4):
        a = (tmp_path / "a" / "0" / "0" / f"source0_prompt0_{i}.png").read_bytes()
        b = (tmp_path / "b" / "0" / "1" / f"source0_prompt1_{i}.png").read_bytes()
        assert a == b
    other = (tmp_path / "b" / "0" / "0" / "source0_prompt0_0.png").read_bytes()
    assert other != (tmp_path / "a" / "0" / "0" / "source0_prompt0_0.png").read_bytes()


def test_embeddings_round_trip_into_the_text_encoder(setup):
    root, _, _, vectors = setup
    loaded = load_embeds([root / "embeds.safetensors"])
    assert loaded.keys() == vectors.keys() and all(
        torch.equal(loaded[t], vectors[t]) for t in vectors
    )
    sd = build_tiny_sd(seed=0)
    ids = add_tokens(sd, loaded)
    assert list(ids.values()) == [49408, 49409]
    assert sd.tokenizer("a <new1> and <new2>.").input_ids[2:5] == [49408, 537, 49409]
    table = learned_rows(sd)(torch.tensor(list(ids.values())))
    assert torch.equal(table[0], vectors["<new1>"]) and torch.equal(table[1], vectors["<new2>"])


def test_bad_inputs_are_one_line_errors(setup, tmp_path):
    root = setup[0]
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"0": {"token_name": "<new3>", "prompt": ["A <new3> dog."]}}))
    with pytest.raises(CLIError, match="<new3>, which is not in"):
        _run(setup, tmp_path / "o", json_path=unknown)
    bad = tmp_path / "bad.json"
    bad.write_text('{"0": {"prompt": "not a list"}}')
    with pytest.raises(CLIError, match="non-empty list"):
        _run(setup, tmp_path / "o", json_path=bad)
    with pytest.raises(CLIError, match="checkpoint not found"):
        infer.main(
            [
                str(root / "input.json"),
                str(tmp_path / "o"),
                str(tmp_path / "sd-v1-4.ckpt"),
                "--embeds",
                str(root / "embeds.safetensors"),
            ]
        )
    with pytest.raises(CLIError, match="learned embeddings not found"):
        infer.main(
            [
                str(root / "input.json"),
                str(tmp_path / "o"),
                str(setup[2]),
                "--embeds",
                str(tmp_path / "x"),
            ]
        )
    big = tmp_path / "big.safetensors"
    save_embeds(big, {"<new1>": torch.zeros(768), "<new2>": torch.zeros(768)})
    with pytest.raises(CLIError, match=r"needs \(32,\)"):
        _run(setup, tmp_path / "o", "--embeds", str(big))
    assert not (tmp_path / "o" / "0").exists()


def test_hw2_3_sh_end_to_end(setup, tmp_path):
    root, folder, ckpt, _ = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HW2_QUIET": "1"}
    ok = subprocess.run(
        [
            "bash",
            str(REPO / "hw2_3.sh"),
            str(root / "input.json"),
            str(tmp_path / "out"),
            str(ckpt),
            "--sd-config",
            str(folder),
            "--embeds",
            str(root / "embeds.safetensors"),
            "--steps",
            "1",
            "--n",
            "2",
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2 * 3 * 2
    missing = subprocess.run(
        [
            "bash",
            str(REPO / "hw2_3.sh"),
            str(root / "input.json"),
            str(tmp_path / "o2"),
            str(tmp_path / "sd-v1-4.ckpt"),
            "--embeds",
            str(root / "embeds.safetensors"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith(
        "bash hw2_3.sh: error: "
    )
    usage = subprocess.run(
        ["bash", str(REPO / "hw2_3.sh"), "only-one-arg"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_default_reads_one_file_per_concept_from_the_checkpoints_folder(
    setup, tmp_path, monkeypatch
):
    root, folder, ckpt, vectors = setup
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    monkeypatch.setattr(infer, "SHIPPED_EMBEDS_DIR", shipped)
    args = [
        str(root / "input.json"),
        str(tmp_path / "out"),
        str(ckpt),
        "--sd-config",
        str(folder),
        "--steps",
        "1",
        "--n",
        "1",
        "--device",
        "cpu",
    ]
    with pytest.raises(CLIError, match="no learned embeddings in"):
        infer.main(args)
    for token, name in (("<new1>", "new1"), ("<new2>", "new2")):  # train.py's outputs, renamed
        save_embeds(shipped / f"{name}.safetensors", {token: vectors[token]})
    infer.main(args)
    _run(setup, tmp_path / "explicit", "--steps", "1", "--n", "1")
    for f in (tmp_path / "explicit").rglob("*.png"):
        assert (
            f.read_bytes() == (tmp_path / "out" / f.relative_to(tmp_path / "explicit")).read_bytes()
        )
