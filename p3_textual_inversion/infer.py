"""Render every prompt of every concept in the course json with the learned tokens.

    python -m p3_textual_inversion.infer INPUT_JSON OUT_DIR sd-v1-4.ckpt          # = bash hw2_3.sh ...

Writes OUT_DIR/<concept key>/<prompt index>/source<key>_prompt<index>_<i>.png, i = 0..24, for
any number of concepts and prompts. A prompt may use several learned tokens ("a <new1> next to
a <new2>"). Each prompt's images come from the same seed, so a prompt's files depend only on
(prompt, seed, model, embeddings) and the same command writes the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from hw2_utils import (
    output_lock,
    deferred_signals,
    published_folders,
    HelpFormatter,
    check_not_input,
    check_replaceable,
    add_overwrite_option,
    CLIError,
    check_output_path,
    non_negative_float,
    output_dir,
    positive_int,
    progress,
    require_file,
    resolve_device,
    resolve_dtype,
    run_cli,
    save_images,
    seed_int,
)
from p3_textual_inversion.embeddings import (
    HOW_TO_TRAIN,
    PLACEHOLDER,
    add_tokens,
    check_vectors,
    load_embeds,
)
from stable_diffusion.loader import HOW_TO_GET, V1_CONFIG_DIR, load_stable_diffusion, text_width
from stable_diffusion.pipeline import text_to_image

# One learned_embeds.safetensors per concept (train.py's OUT/model.pt, renamed), all read by default.
SHIPPED_EMBEDS_DIR = Path(__file__).resolve().parent / "checkpoints"
# Grading setup: SD v1's usual sampler settings; 50 DDIM steps x 100 images x CFG in fp16 is
# the 15-minute budget's plan (README "P3" gives the estimate).
STEPS, GUIDANCE, SEED = 50, 7.5, 2024


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("input_json", help="concepts: {key: {token_name, prompt: [...], ...}}")
    p.add_argument("out", help="output directory (created if missing)")
    p.add_argument("model", help="SD v1.x: CompVis single file (sd-v1-4.ckpt) or diffusers folder")
    p.add_argument(
        "--embeds",
        nargs="+",
        default=None,
        help=f"learned_embeds.safetensors file(s) (default: every *.safetensors in {SHIPPED_EMBEDS_DIR})",
    )
    p.add_argument(
        "--sd-config", default=str(V1_CONFIG_DIR), help="configs for a single-file model"
    )
    p.add_argument("--n", type=positive_int, default=25, help="images per prompt (at most 10000)")
    p.add_argument("--steps", type=positive_int, default=STEPS, help="DDIM steps (at most 1000)")
    p.add_argument(
        "--guidance",
        type=non_negative_float,
        default=GUIDANCE,
        help="classifier-free guidance scale",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=5,
        help="images per UNet batch (x2 with guidance)",
    )
    p.add_argument(
        "--precision",
        default="fp16",
        help="fp16 | bf16 | fp32 (fp32 on CPU; NaN batches redo in fp32)",
    )
    p.add_argument("--seed", type=seed_int, default=SEED)
    add_overwrite_option(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args(argv)


def _refuse_duplicate_keys(path: Path):
    """A json object_pairs_hook: a key given twice in one object is a CLIError naming it (json's
    own rule, the last one wins, would drop a concept or its prompts without a word)."""

    def build(pairs: list[tuple[str, object]]) -> dict:
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise CLIError(f"{path}: key {key!r} appears twice in one object")
            seen[key] = value
        return seen

    return build


def folder_name_problem(name: str) -> str | None:
    """Why `name` cannot be one plain folder name under OUT_DIR, or None: a separator or '..'
    would write elsewhere, a leading '.' hides the folder, and control characters (a newline,
    NUL) make names no listing or grader reads back as typed."""
    if not name:
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if name.startswith("."):
        return "it starts with '.'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it holds a control character (a newline, tab or NUL)"
    if len(name.encode()) > 200:
        return "it is longer than 200 bytes"
    return None


def read_concepts(path: str | Path) -> dict[str, list[str]]:
    """{concept key: prompts} from the course json; CLIError on anything malformed. A UTF-8
    byte-order mark (what Windows editors write) is accepted; a key given twice is refused."""
    path = require_file(path, "input json")
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(text, object_pairs_hook=_refuse_duplicate_keys(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CLIError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not data:
        raise CLIError(f'{path} must hold an object of concepts, e.g. {{"0": {{"prompt": [...]}}}}')
    concepts = {}
    for key, concept in data.items():
        prompts = concept.get("prompt") if isinstance(concept, dict) else None
        if (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(s, str) for s in prompts)
        ):
            raise CLIError(
                f"{path}: concept {key!r} needs a non-empty list of strings under 'prompt'"
            )
        # the key names OUT_DIR/<key>/ and is part of every file name in it
        problem = folder_name_problem(key)
        if problem:
            raise CLIError(f"{path}: concept key {key!r} cannot be a folder name: {problem}")
        concepts[key] = prompts
    return concepts


def check_tokens(concepts: dict[str, list[str]], known: set[str], embeds: list[str]) -> None:
    for key, prompts in concepts.items():
        for prompt in prompts:
            unknown = [t for t in PLACEHOLDER.findall(prompt) if t not in known]
            if unknown:
                raise CLIError(
                    f"concept {key}: prompt {prompt!r} uses {', '.join(unknown)}, which is not in "
                    f"{', '.join(embeds)} (it has {', '.join(sorted(known)) or 'no tokens'})"
                )


def warn_long_prompts(sd, jobs: list[tuple[str, int, str]]) -> None:
    """SD v1 reads 77 CLIP tokens (start and end included) and cuts the rest: say so."""
    limit = sd.tokenizer.model_max_length
    for key, p, prompt in jobs:
        n = len(sd.tokenizer(prompt, truncation=False).input_ids)
        if n > limit:
            print(
                f"warning: concept {key} prompt {p} is {n} CLIP tokens; only the first {limit} are used",
                file=sys.stderr,
            )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.n > 10000 or args.steps > 1000:
        raise CLIError("--n must be in 1..10000 and --steps in 1..1000")
    concepts = read_concepts(args.input_json)
    if args.embeds is None:
        args.embeds = [str(f) for f in sorted(SHIPPED_EMBEDS_DIR.glob("*.safetensors"))]
        if not args.embeds:
            raise CLIError(f"no learned embeddings in {SHIPPED_EMBEDS_DIR} ({HOW_TO_TRAIN})")
    vectors = load_embeds(args.embeds)
    check_tokens(concepts, set(vectors), args.embeds)
    model = Path(args.model)
    if not model.exists():
        raise CLIError(f"Stable Diffusion checkpoint not found: {model} ({HOW_TO_GET})")
    # before the minute it takes to load SD
    check_vectors(vectors, text_width(model, args.sd_config))
    out = Path(args.out)
    jobs = [
        (key, p, prompt) for key, prompts in concepts.items() for p, prompt in enumerate(prompts)
    ]

    def names(key: str, p: int) -> list[str]:
        return [f"source{key}_prompt{p}_{i}.png" for i in range(args.n)]

    for key, p, _ in jobs:  # before the minutes of sampling, creating nothing
        check_output_path(out / key / str(p), folder=True)
        check_replaceable(out / key / str(p), names(key, p), args.overwrite)
        outputs = [out / key / str(p) / name for name in names(key, p)]
        check_not_input(outputs, [args.input_json, args.model, *args.embeds])
    device = resolve_device(args.device)
    sd = load_stable_diffusion(
        model, args.sd_config, device=device, dtype=resolve_dtype(args.precision, device)
    )
    add_tokens(sd, vectors)
    warn_long_prompts(sd, jobs)

    # Every prompt's folder is staged while sampling; all are published at the end under one
    # lock, with signals held back: the new set appears whole, or (on an error, Ctrl-C or
    # SIGTERM while sampling) nothing changes
    with contextlib.ExitStack() as staged:
        for key, p, prompt in progress(jobs, desc="prompts"):
            tmp = staged.enter_context(
                output_dir(out / key / str(p), names(key, p), overwrite=args.overwrite)
            )
            images = text_to_image(
                sd,
                prompt,
                args.n,
                seed=args.seed,
                steps=args.steps,
                guidance=args.guidance,
                batch_size=args.batch_size,
                progress=progress,
            )
            save_images(images, [tmp / name for name in names(key, p)])
        publish = staged.pop_all()
    with output_lock(out), deferred_signals():
        publish.close()
    print(f"wrote {len(jobs) * args.n} images for {len(concepts)} concepts to {out}")
    for key, prompts in concepts.items():
        # an earlier input with more prompts: its folders stay (the user may want them), said once
        earlier = [
            p for p in published_folders(out / key) if p not in map(str, range(len(prompts)))
        ]
        if earlier:
            print(
                f"note: {out / key} also holds prompt folders {', '.join(earlier)} of an earlier "
                "run that this input has no prompt for: left in place",
                file=sys.stderr,
            )


if __name__ == "__main__":
    run_cli(main)
