"""Length-grouped vs randomly padded training batches: padding efficiency and throughput.

Runs the same recipe twice through `adapt run` (train.group_by_length = true / false) on a slice of the
training data and prints a Markdown table from the two summary.json files.

    HF_HUB_OFFLINE=1 python bench/length_grouping.py [--recipe recipes/lora-sst2.toml] [--rows 4000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import run_recipe


def run(recipe: Path, rows: int, grouped: bool, out: Path) -> dict:
    overrides = {
        "data.max_train_samples": rows,
        "data.max_eval_samples": 200,
        "train.group_by_length": str(grouped).lower(),
        "train.eval_every": 10**9,
    }
    return run_recipe(recipe, out, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/lora-sst2.toml"))
    parser.add_argument("--rows", type=int, default=4000, help="training rows (one epoch)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {grouped: run(args.recipe, args.rows, grouped, Path(tmp) / str(grouped)) for grouped in (True, False)}
    print(f"\n{args.recipe}, {args.rows} training rows, one epoch\n")
    print("| batches | padding efficiency | train samples/s | train seconds | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- |")
    for grouped, label in ((True, "length-grouped"), (False, "random")):
        s = results[grouped]
        print(
            f"| {label} | {s['padding_efficiency']:.2f} | {s['train_samples_per_second']:.0f} "
            f"| {s['train_seconds']:.1f} | {s['memory']['peak_rss_mib']:.0f} |"
        )
    speedup = results[True]["train_samples_per_second"] / results[False]["train_samples_per_second"]
    print(f"\nspeedup from length grouping: {speedup:.2f}x")


if __name__ == "__main__":
    main()
