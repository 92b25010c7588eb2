"""Learned tokens: new rows appended to CLIP's token table, and their `learned_embeds.safetensors`.

The frozen table is never touched: a learned token's id (>= the base vocabulary size) is
looked up in a separate parameter holding only the new rows, so training them cannot move
any other row, and optimizer state is a few vectors rather than 49k x 768.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from hw2_utils import CLIError, error_summary, require_finite
from stable_diffusion.model import StableDiffusion

# How a learned token is spelled in a prompt: "<new1>", "<cat-toy>" ...
PLACEHOLDER = re.compile(r"<[^<>\s]+>")
# No download exists for them (checkpoints.tsv has none): they are trained, then copied in.
HOW_TO_TRAIN = (
    'train them with `python -m p3_textual_inversion.train ... --out RUN` (README "P3") and copy '
    "RUN/model.pt to p3_textual_inversion/checkpoints/NAME.safetensors, or pass --embeds"
)


class TokenEmbeddingWithNew(nn.Module):
    """Drop-in for CLIP's `token_embedding`: ids below `base.num_embeddings` read the frozen
    table, ids from there on read the rows of `new` (float32, the only trainable part)."""

    def __init__(self, base: nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.new = nn.Parameter(new_rows.detach().float().clone().to(base.weight.device))

    @property
    def num_base(self) -> int:
        return self.base.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids.clamp(max=self.num_base - 1))
        is_new = ids >= self.num_base
        if not is_new.any():
            return out
        new = self.new[(ids - self.num_base).clamp(min=0)].to(out.dtype)
        return torch.where(is_new.unsqueeze(-1), new, out)


def _token_embedding_owner(sd: StableDiffusion) -> nn.Module:
    te = sd.text_encoder
    return getattr(te, "text_model", te).embeddings  # transformers < 5.6 nests one level deeper


def add_tokens(sd: StableDiffusion, vectors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Register learned tokens with the tokenizer and the text encoder; returns their ids."""
    owner = _token_embedding_owner(sd)
    emb = owner.token_embedding
    dim = (emb.base if isinstance(emb, TokenEmbeddingWithNew) else emb).embedding_dim
    check_vectors(vectors, dim)
    ids = {}
    for token in vectors:
        if sd.tokenizer.add_tokens([token]) != 1:
            raise CLIError(
                f"token {token} already exists in the tokenizer; pick another placeholder"
            )
        ids[token] = sd.tokenizer.convert_tokens_to_ids(token)
    rows = torch.stack([v.float() for v in vectors.values()]) if vectors else torch.zeros(0, dim)
    if isinstance(emb, TokenEmbeddingWithNew):
        emb.new = nn.Parameter(torch.cat([emb.new.detach(), rows.to(emb.new.device)]))
    else:
        emb = owner.token_embedding = TokenEmbeddingWithNew(emb, rows)
    if list(ids.values()) != list(
        range(emb.num_base + len(emb.new) - len(ids), emb.num_base + len(emb.new))
    ):
        raise CLIError(
            f"tokenizer ids {list(ids.values())} do not follow the text encoder's {emb.num_base} rows"
        )
    return ids


def check_vectors(vectors: dict[str, torch.Tensor], dim: int) -> None:
    """Learned tokens must be spelled <name> and hold `dim` values (the text encoder's width)."""
    for token, vector in vectors.items():
        if not PLACEHOLDER.fullmatch(token):
            raise CLIError(f"learned token {token!r} must look like <name> (no spaces)")
        if vector.shape != (dim,):
            raise CLIError(
                f"learned token {token} has {tuple(vector.shape)} values but the text encoder needs ({dim},)"
            )


def learned_rows(sd: StableDiffusion) -> TokenEmbeddingWithNew:
    emb = _token_embedding_owner(sd).token_embedding
    if not isinstance(emb, TokenEmbeddingWithNew):
        raise ValueError("no learned tokens have been added")
    return emb


def initializer_vector(sd: StableDiffusion, word: str) -> torch.Tensor:
    """The embedding of `word`, which must be a single CLIP token (e.g. "dog", "painting")."""
    ids = sd.tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise CLIError(
            f"initializer {word!r} is {len(ids)} CLIP tokens; pick a word that is exactly one"
        )
    return _token_embedding_owner(sd).token_embedding.weight[ids[0]].detach().float().cpu()


def save_embeds(
    path: str | Path, vectors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """{token: (D,) float32}, the layout diffusers' load_textual_inversion also reads; the same
    vectors and metadata give the same bytes in every process."""
    from safetensors.torch import save

    blob = save(
        {t: v.detach().float().cpu().contiguous() for t, v in vectors.items()},
        metadata={k: str(v) for k, v in (metadata or {}).items()},
    )
    Path(path).write_bytes(sorted_metadata(blob))


def sorted_metadata(blob: bytes) -> bytes:
    """A safetensors file with its __metadata__ keys sorted. safetensors writes them from a Rust
    HashMap, whose order changes from one process to the next, so the same command would
    otherwise write different bytes. The header is JSON padded to 8 bytes; the tensor data after
    it is addressed relative to its own start, so a rewritten header leaves it valid."""
    import json

    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def load_embeds(paths: list[str | Path]) -> dict[str, torch.Tensor]:
    """Merge several learned_embeds files; a token defined twice is an error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    vectors: dict[str, torch.Tensor] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise CLIError(f"learned embeddings not found: {path} ({HOW_TO_TRAIN})")
        try:
            loaded = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CLIError(f"cannot read {path} as safetensors ({error_summary(e)})") from None
        for token, vector in loaded.items():
            if token in vectors:
                raise CLIError(
                    f"token {token} is defined in more than one embeddings file ({path})"
                )
            # diffusers' older format stores (1, D)
            vectors[token] = require_finite(vector.reshape(-1), f"learned token {token} of {path}")
    return vectors
