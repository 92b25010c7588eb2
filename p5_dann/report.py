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
    "in training or selection. Source: the whole MNIST-M (59,001 training images; its 9,001 test images are the source "
    "val). Departures from Ganin et al., made in short trial runs of an earlier version (8,000 source images) that did "
    "look at USPS val accuracy (so the hyperparameters, unlike the checkpoints, are tuned on the target): Adam instead "
    "of SGD with the paper's annealing lr / (1 + 10p)^0.75; the paper's lambda schedule 2/(1+exp(-10p))-1 scaled by "
    "lambda_max = 0.3 (lambda -> 1 made the domain head win and lowered target accuracy); source and target batches "
    "pass through the network separately, so BatchNorm normalises each domain with its own statistics; random "
    "rotation, zoom up to 1.5x and shift for both domains (USPS digits fill their frame, MNIST-M ones do not), "
    "random grayscale and channel shuffles for the source. Improvements on top, none using a target label, each its "
    "own row: `dann_entropy` adds the entropy of the target predictions (weight 0.1; Grandvalet & Bengio 2004); "
    "`dann_fixmatch` adds FixMatch's consistency (Sohn et al. 2020): a weakly augmented target view's prediction, "
    "where at least 0.95 confident, is the label of a strongly augmented view (jitter, colour, 10x10 cutout). The "
    "AdaBN column (Li et al. 2016) re-estimates every BatchNorm's statistics on the unlabelled USPS train images "
    "before scoring. The shipped model (`p5_dann/run.sh`) is `dann_fixmatch`, a row fixed before the runs, together "
    "with AdaBN; AdaBN was then dropped because it lowered USPS val accuracy for every adapted row, a choice between "
    "two options made by looking at target labels. Two more caveats: BatchNorm's running statistics (used at "
    "evaluation) are updated by both domains' passes in training, so source val, the selection criterion, is scored "
    "under mixed statistics; and `target_only`, the upper bound, is selected on the USPS val set it is scored on. "
    "Images are 28x28 RGB (grayscale is repeated over the channels). USPS stands in for SVHN, which these "
    "machines do not have: for MNIST-M -> SVHN run `python -m bench.p5_dann --data hw2_data/digits --source "
    "mnistm --target svhn` on the course data.")


def _table(record: dict, source: Path) -> list[str]:
    adabn = all("target_val_acc_adabn" in r["selected"] for r in record["rows"].values())
    lines = [f"Accuracy on {record['target'].upper()} val, {record['epochs']} epochs per row unless its arguments say "
             f"otherwise, {record['hardware']}; measured with `{record['command']}` (read from `{source}`).", "",
             "| row | what | target val acc (epoch chosen by source val) |" + (" with AdaBN |" if adabn else "")
             + " target val acc, last epoch | source val acc (chosen epoch) | wall time |",
             "| --- | --- | --- |" + (" --- |" if adabn else "") + " --- | --- | --- |"]
    for name, r in record["rows"].items():
        chosen, last = r["selected"], r["final"]
        lines.append(f"| {name} | {r['what']} | {chosen['target_val_acc']:.4f} (epoch {chosen['epoch']}) | "
                     + (f"{chosen['target_val_acc_adabn']:.4f} | " if adabn else "")
                     + f"{last['target_val_acc']:.4f} | {chosen['source_val_acc']:.4f} | {r['seconds']:.0f} s |")
    if "inference" in record:
        i = record["inference"]
        lines += ["", f"`python -m p5_dann.infer` (what run.sh calls) with the shipped `{i['row']}` model"
                      f"{' (AdaBN)' if i.get('adabn') else ''} on the {i['images']} val images: CSV accuracy "
                      f"{i['accuracy']:.4f}, {i['seconds']:.1f} s on the CPU."]
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
                  f"p5_dann/checkpoints/mnistm_usps_dann.pt --data <digits> --out {d}`._", ""]
    return "\n".join(lines)
