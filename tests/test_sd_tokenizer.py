"""The SD v1 tokenizer built from open_clip's BPE file: same ids as open_clip, committed files
identical to a fresh build, and no silently empty tokenizer."""

from __future__ import annotations

import pytest

from hw2_utils import CLIError
from stable_diffusion.tokenizer import TOKENIZER_DIR, build_files, load_tokenizer

STRINGS = [
    "A <new1> shepherd posing proudly on a hilltop with Mount Fuji in the background.",
    "Manhattan skyline in the style of David Revoy!!",
    "it's 3.14 café naïve   HELLO, world's   tabs\tand\nnewlines",
    "emoji 🙂 and 日本語 and punctuation ...?!",
    "willow_tree",
]


def test_ids_match_open_clip():
    import open_clip

    ours = load_tokenizer()
    # open_clip's own SimpleTokenizer, same BPE file
    reference = open_clip.get_tokenizer("ViT-L-14")
    for s in STRINGS:
        ref = reference([s])[0].tolist()
        ref = ref[: ref.index(49407) + 1]  # open_clip pads with 0, SD with <|endoftext|>
        assert ours(s).input_ids == ref, s


def test_padding_is_end_of_text_like_sd_v1():
    ids = load_tokenizer()("a photo", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[:4] == [49406, 320, 1125, 49407] and set(ids[3:]) == {49407}


def test_committed_files_equal_a_fresh_build(tmp_path):
    from open_clip.tokenizer import default_bpe

    vocab, merges = build_files(default_bpe(), tmp_path)
    assert vocab.read_bytes() == (TOKENIZER_DIR / "vocab.json").read_bytes()
    assert merges.read_bytes() == (TOKENIZER_DIR / "merges.txt").read_bytes()


def test_missing_or_empty_tokenizer_files_are_errors(tmp_path):
    with pytest.raises(CLIError, match="vocab.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(CLIError, match="broken"):
        load_tokenizer(tmp_path)
