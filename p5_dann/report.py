"""P5 report section: reads RUNS_DIR/p5/p5_bench.json and the t-SNE figures; invents nothing."""
from __future__ import annotations

import json
from pathlib import Path


def section(runs_dir: str | Path) -> str:
    d = Path(runs_dir) / "p5"
    lines = ["## P5: DANN domain adaptation (MNIST-M -> USPS)", "",
             "Feature extractor (2 conv blocks) -> label head, and -> gradient reversal layer -> domain head "
             "(p5_dann/model.py). The GRL is our own autograd Function (identity forward, -lambda * grad backward; "
             "tests/test_p5_dann.py); lambda = 2/(1+exp(-10p))-1 and lr = 0.01/(1+10p)^0.75 as in the paper, SGD "
             "momentum 0.9. DANN sees source images + labels and target images only; the model is selected on the "
             "source val split, never on target labels. Images are 28x28, converted to grayscale for the USPS "
             "target, with random rotation/scale/shift in training. USPS stands in for SVHN, which these machines "
             "do not have.", ""]
    bench = d / "p5_bench.json"
    if bench.is_file():
        record = json.loads(bench.read_text())
        lines += [f"Accuracy on {record['target'].upper()} val ({record['epochs']} epochs, {record['hardware']}). "
                  f"Command: `{record['command']}`", "",
                  "| mode | target val acc (selected by source val) | final epoch | source val acc | wall time |",
                  "| --- | --- | --- | --- | --- |"]
        for mode, r in record["modes"].items():
            lines.append(f"| {mode} | {r['selected']['target_val_acc']:.4f} | {r['final']['target_val_acc']:.4f} | "
                         f"{r['selected']['source_val_acc']:.4f} | {r['seconds']:.0f} s |")
        lines.append("")
    else:
        lines += [f"_Accuracy table missing: run `python bench/p5_dann.py --work {d}`._", ""]
    figures = sorted(d.glob("tsne_*.png"))
    if figures:
        lines += ["t-SNE of the DANN features on val images of both domains:", ""]
        lines += [f"![{f.stem}]({f.resolve()})" for f in figures]
        lines.append("")
    else:
        lines += [f"_t-SNE figures missing: run `python p5_dann/analysis.py --checkpoint "
                  f"p5_dann/checkpoints/mnistm_usps_dann.pt --out {d}`._", ""]
    return "\n".join(lines)
