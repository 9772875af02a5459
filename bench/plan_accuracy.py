"""`adapt plan`'s estimate against the measured peak: the three MiniLM recipes, with and without activation
checkpointing, each a real run whose summary.json holds both `memory.planned_peak_bytes` (the plan printed
before the weights loaded) and `memory.measured_peak_bytes` (CPU: resident memory above the baseline taken just
before the model loads; CUDA: torch.cuda.max_memory_allocated).

    HF_HUB_OFFLINE=1 python bench/plan_accuracy.py [--rows 2000] [--recipes lora full int8-lora]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import cpu_model, run_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="training rows (one epoch); 0 keeps the recipe's")
    parser.add_argument("--recipes", nargs="+", default=["lora", "full", "int8-lora"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            for ckpt in (False, True):
                overrides = {"train.gradient_checkpointing": str(ckpt).lower()}
                overrides.update(item.split("=", 1) for item in args.overrides)
                if args.rows:
                    overrides["data.max_train_samples"] = args.rows
                s = run_recipe(f"recipes/{name}-sst2.toml", Path(tmp) / f"{name}-{ckpt}", overrides)
                memory = s["memory"]
                planned, measured = memory.get("planned_peak_bytes"), memory["measured_peak_bytes"]
                rows.append((name, ckpt, planned, measured, s["precision"]))
    print(f"\n{cpu_model()}; {args.rows or 'the recipe’s'} training rows, one epoch\n")
    print("| recipe | precision | checkpointing | planned MiB | measured MiB | planned / measured |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, ckpt, planned, measured, precision in rows:
        ratio = f"{planned / measured:.2f}" if planned else "–"
        plan_mib = f"{planned / 2**20:,.0f}" if planned else "–"
        cells = [f"{name}-sst2", precision, "on" if ckpt else "off", plan_mib, f"{measured / 2**20:,.0f}", ratio]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
