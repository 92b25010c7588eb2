"""The CLIP BPE tokenizer of SD v1, built offline from the BPE file open_clip ships.

SD v1's text encoder is OpenAI's CLIP ViT-L/14, whose tokenizer is the 49,408-entry byte-level
BPE that open_clip also ships as `bpe_simple_vocab_16e6.txt.gz`. `build_files` turns that file
into the `vocab.json` / `merges.txt` pair transformers reads; the pair is committed under
stable-diffusion/configs/sd-v1/tokenizer/ so inference needs neither open_clip nor the hub.

    python -m stable_diffusion.tokenizer          # regenerate the committed files
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from hw2_utils import HelpFormatter, CLIError, run_cli
from stable_diffusion import CONFIG_ROOT

TOKENIZER_DIR = CONFIG_ROOT / "sd-v1" / "tokenizer"
VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # bytes, bytes + "</w>", start/end of text
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable character table, in byte-rank order (the first
    256 vocabulary entries)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def build_files(bpe_gz: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt for CLIPTokenizer from open_clip's BPE file, with the
    same id order open_clip uses (so both tokenizers give the same ids)."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]  # line 0 is a version header
    byte_chars = _bytes_to_unicode()
    tokens = (
        byte_chars
        + [c + "</w>" for c in byte_chars]
        + ["".join(m.split()) for m in merges]
        + [BOS, EOS]
    )
    if len(tokens) != VOCAB_SIZE or len(set(tokens)) != VOCAB_SIZE:
        raise CLIError(
            f"{bpe_gz} does not look like CLIP's BPE file ({len(set(tokens))} distinct tokens)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = out / "vocab.json", out / "merges.txt"
    vocab_path.write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def load_tokenizer(tokenizer_dir: str | Path = TOKENIZER_DIR):
    """CLIPTokenizer from a folder holding vocab.json + merges.txt (padding with <|endoftext|>,
    as SD v1 was trained).

    The file paths go in positionally: in transformers 5 the keyword names are `vocab` /
    `merges`, and the old `vocab_file=` keyword is silently swallowed by **kwargs, leaving an
    empty tokenizer. The result is checked, because an empty tokenizer does not raise."""
    from transformers import CLIPTokenizer

    folder = Path(tokenizer_dir)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    for f in (vocab, merges):
        if not f.is_file():
            raise CLIError(
                f"tokenizer file not found: {f} (regenerate with python -m stable_diffusion.tokenizer)"
            )
    try:
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=MAX_LENGTH)
        ids = tokenizer("a photo").input_ids
    except Exception as e:  # the Rust backend raises bare Exceptions on malformed files
        raise CLIError(
            f"tokenizer in {folder} is broken ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    if (
        len(tokenizer) < VOCAB_SIZE
        or tokenizer.convert_tokens_to_ids(EOS) != VOCAB_SIZE - 1
        or len(ids) != 4
    ):
        raise CLIError(
            f"tokenizer in {folder} is broken ({len(tokenizer)} entries; 'a photo' -> {ids})"
        )
    return tokenizer


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--bpe",
        default=None,
        help="bpe_simple_vocab_16e6.txt.gz (default: the one open_clip ships)",
    )
    p.add_argument("--out", default=str(TOKENIZER_DIR))
    args = p.parse_args(argv)
    if args.bpe is None:
        from open_clip.tokenizer import default_bpe

        args.bpe = default_bpe()
    for path in build_files(args.bpe, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
