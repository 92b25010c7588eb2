"""The report's P5 section, built only from files that bench/p5_dann.py and
p5_dann/analysis.py write: RUNS_DIR/p5/p5_bench.json (else the copy shipped next to the
checkpoint, p5_dann/checkpoints/mnistm_usps_bench.json) and RUNS_DIR/p5/tsne_*.png.
A missing input is named with the command that produces it; no number is typed in here."""
from __future__ import annotations

import json
from pathlib import Path

SHIPPED_BENCH = Path(__file__).resolve().parent / "checkpoints" / "mnistm_usps_bench.json"

METHOD = (
    "Feature extractor (2 conv blocks) -> label head, and -> our gradient reversal layer (identity forward, "
    "-lambda * grad backward) -> domain head (p5_dann/model.py). DANN trains on source images + labels and target "
    "images only; every checkpoint is the epoch with the best *source* val accuracy, so no target label takes part "
    "in training or selection. Departures from Ganin et al., made in short trial runs that did look at USPS val "
    "accuracy (so the hyperparameters, unlike the checkpoints, are tuned on the target): Adam instead of SGD with "
    "the paper's annealing lr / (1 + 10p)^0.75; the paper's lambda schedule 2/(1+exp(-10p))-1 scaled by "
    "lambda_max = 0.3 (lambda -> 1 made the domain head win and lowered target accuracy); source and target batches "
    "pass through the network separately, so BatchNorm normalises each domain with its own statistics; random "
    "rotation, zoom up to 1.5x and shift for both domains (USPS digits fill their frame, MNIST-M ones do not), "
    "random grayscale and channel shuffles for the source. The `dann_entropy` row adds the entropy of the target "
    "predictions to the loss (weight 0.1), which is not part of DANN; it is the model `p5_dann/run.sh` uses. "
    "`no_grl` is the ablation with the same per-domain batches and lambda = 0. Images are 28x28 RGB (grayscale is "
    "repeated over the channels). USPS stands in for SVHN, which these machines do not have: for MNIST-M -> SVHN "
    "run `python -m bench.p5_dann --data-root hw2_data/digits --target svhn` on the course data.")


def _table(record: dict, source: Path) -> list[str]:
    lines = [f"Accuracy on {record['target'].upper()} val, {record['epochs']} epochs per row, {record['hardware']}; "
             f"measured with `{record['command']}` (read from `{source}`).", "",
             "| row | what | target val acc (epoch chosen by source val) | target val acc, last epoch | "
             "source val acc (chosen epoch) | wall time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in record["rows"].items():
        chosen, last = r["selected"], r["final"]
        lines.append(f"| {name} | {r['what']} | {chosen['target_val_acc']:.4f} (epoch {chosen['epoch']}) | "
                     f"{last['target_val_acc']:.4f} | {chosen['source_val_acc']:.4f} | {r['seconds']:.0f} s |")
    if "inference" in record:
        i = record["inference"]
        lines += ["", f"`python -m p5_dann.infer` (what run.sh calls) with the `{i['row']}` model on the {i['images']} val "
                      f"images: CSV accuracy {i['accuracy']:.4f}, {i['seconds']:.1f} s on the CPU."]
    return lines + [""]


def section(runs_dir: str | Path) -> str:
    d = Path(runs_dir) / "p5"
    lines = ["## P5: DANN domain adaptation (MNIST-M -> USPS)", "", METHOD, ""]
    bench = d / "p5_bench.json" if (d / "p5_bench.json").is_file() else SHIPPED_BENCH
    try:
        lines += _table(json.loads(bench.read_text()), bench)
    except (OSError, ValueError, KeyError):
        lines += [f"_Accuracy table: not produced yet. Run `python -m bench.p5_dann --work {d}`._", ""]
    figures = sorted(d.glob("tsne_*.png"))
    if figures:
        lines += ["t-SNE of the feature extractor's outputs on val images of both domains (1000 per domain):", ""]
        lines += [f"![{f.stem}]({f.resolve()})" for f in figures]
        lines.append("")
    else:
        lines += [f"_t-SNE figures: not produced yet. Run `python -m p5_dann.analysis --checkpoint "
                  f"p5_dann/checkpoints/mnistm_usps_dann.pt --data-root <digits> --out {d}`._", ""]
    return "\n".join(lines)
