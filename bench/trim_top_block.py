"""What `model.trim_top_block` saves: the default recipe with the top block trimmed and whole, side by side.

    HF_HUB_OFFLINE=1 python bench/trim_top_block.py [--pairs 3] [--rows 4000] [--precision fp32] [--recipe lora-sst2]
                                                   [--out FILE.md]

Each pair runs the recipe trimmed and whole, in fresh processes, one after the other (so drift in the machine's
speed falls on both). Per run: training samples/s, the FLOPs per token that the run's FLOP counter found in its first
micro-batch, and validation accuracy; the median ratio of the pairs' samples/s closes the table. Dropout draws masks
for fewer rows in a trimmed block, so the two runs' random numbers differ after the first step: accuracies agree to
noise, not to the last digit (the outputs and gradients themselves agree to rounding: tests/test_trim.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import TRAINING_ONLY, cpu_model, publish, run_recipe


def measure(recipe: Path, trim: bool, rows: int, precision: str, out: Path) -> dict:
    summary = run_recipe(
        recipe,
        out,
        {
            "data.max_train_samples": rows,
            "train.precision": f'"{precision}"',
            "model.trim_top_block": str(trim).lower(),
            **TRAINING_ONLY,
        },
    )
    assert summary["throughput"]["trimmed_top_block"] is trim
    return {
        "samples_per_second": summary["train_samples_per_second"],
        "flops_per_token": summary["throughput"]["flops_per_token"],
        "accuracy": summary["eval"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--recipe", default="lora-sst2")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-trim-top-block.md"))
    args = parser.parse_args()
    recipe = Path("recipes") / f"{args.recipe}.toml"
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(1, args.pairs + 1):
            runs = {}
            for trim in (True, False):
                runs[trim] = measure(recipe, trim, args.rows, args.precision, Path(tmp) / f"{pair}-{trim}")
            ratios.append(runs[True]["samples_per_second"] / runs[False]["samples_per_second"])
            for trim, r in runs.items():
                rows.append(
                    f"| {pair} | {'trimmed' if trim else 'whole'} | {r['samples_per_second']:.1f} | "
                    f"{r['flops_per_token'] / 1e6:.1f} | {r['accuracy']:.4f} |"
                )
    rows.append(f"| **median** | trimmed / whole | **{statistics.median(ratios):.2f}x** | | |")
    intro = (
        f"{cpu_model()}; recipes/{args.recipe}.toml, {args.rows} rows, 1 epoch, {args.precision}, "
        f"top block trimmed and whole in alternating fresh processes"
    )
    publish(intro, ["pair", "top block", "train samples/s", "MFLOP per token", "val accuracy"], rows, args.out)


if __name__ == "__main__":
    main()
