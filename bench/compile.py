"""Does `train.compile` pay? The default recipe with compile off, per block and whole-model, side by side.

    HF_HUB_OFFLINE=1 python bench/compile.py [--pairs 2] [--rows 4000] [--precision fp32 [bf16]] [--out FILE.md]

Each round runs every variant once, in a fresh process, in turn (so drift in the machine's speed falls on all of
them). Per run: seconds from the command to the first step, seconds of the first 10 optimizer steps (where the
compile happens), steady samples/s (the median of the logged windows after the first 50 steps), the whole
training's samples/s, and validation accuracy. The compile pays for a run when its steady gain, times the run's
steps, outweighs its first-steps cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import TRAINING_ONLY, cpu_model, publish, run_recipe

RECIPE = Path("recipes/lora-sst2.toml")
VARIANTS = {
    "off": {"train.compile": "false"},
    "blocks": {"train.compile": "true", "train.compile_scope": '"blocks"'},
    "model": {"train.compile": "true", "train.compile_scope": '"model"'},
}


def measure(variant: str, rows: int, precision: str, out: Path) -> dict:
    summary = run_recipe(
        RECIPE,
        out,
        {
            "data.max_train_samples": rows,
            "train.precision": precision,
            "train.log_every": 10,
            **TRAINING_ONLY,
            **VARIANTS[variant],
        },
    )
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in logs if "samples_per_second" in r and "step" in r]
    steady = [r["samples_per_second"] for r in windows if r["step"] > 50]
    first = windows[0]
    return {
        "to_first_step": summary["seconds_to_first_step"],
        "first_10_steps": first["step"] * 32 / first["samples_per_second"],
        "steady": statistics.median(steady) if steady else float("nan"),
        "overall": summary["train_samples_per_second"],
        "accuracy": summary["eval"]["accuracy"],
        "graphs": (summary["compile"] or {}).get("graphs", 0),
        "breaks": (summary["compile"] or {}).get("graph_breaks", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-compile.md"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.pairs + 1):
            for precision in args.precision:
                for variant in args.variants:
                    found = measure(variant, args.rows, precision, Path(tmp) / f"{variant}-{precision}-{round_}")
                    print(variant, precision, found, flush=True)
                    rows.append(
                        f"| {round_} | {precision} | {variant} | {found['to_first_step']:.1f} | "
                        f"{found['first_10_steps']:.1f} | {found['steady']:.1f} | {found['overall']:.1f} | "
                        f"{found['accuracy']:.4f} | {found['graphs']} / {found['breaks']} |"
                    )
    publish(
        f"{cpu_model()}; {args.rows:,} SST-2 rows, one epoch, batch 32; MiniLM-L6 + LoRA r=8 (recipes/lora-sst2.toml).",
        [
            "round",
            "precision",
            "compile",
            "s to first step",
            "s for steps 1-10",
            "steady samples/s",
            "samples/s overall",
            "val accuracy",
            "graphs / breaks",
        ],
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
