"""Compare the adaptation methods on SST-2: run each method's recipe and print a Markdown table.

    HF_HUB_OFFLINE=1 python bench/methods.py [--out runs/bench-methods.md] [--set KEY=VALUE ...]

Every recipe uses the same model, data, seed and budget (MiniLM-L6, 40,000 SST-2 training rows, one
epoch); accuracy is on the 872-row validation split. `--set` overrides go to every run (for a quick
smoke test: --set data.max_train_samples=500).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import publish, run_recipe

RECIPES = ["lora", "adapters", "head-only", "gradual-unfreezing", "int8-lora", "full"]


def run(name: str, out_dir: Path, overrides: list[str]) -> dict:
    settings = dict(item.split("=", 1) for item in overrides)
    return run_recipe(Path("recipes") / f"{name}-sst2.toml", out_dir / name, settings)


def row(name: str, s: dict) -> str:
    params = s["parameters"]
    memory = s["memory"]
    cuda = f"{memory['peak_cuda_mib']:,.0f}" if "peak_cuda_mib" in memory else "–"
    return (
        f"| {name} | {params['trainable']:,} ({params['trainable_percent']:.2f}%) | {s['eval']['accuracy']:.4f} "
        f"| {s['process_seconds']:.0f} | {s['train_samples_per_second']:.0f} | {memory['peak_rss_mib']:,.0f} | {cuda} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-methods.md"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-methods"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", nargs="*", default=RECIPES, choices=RECIPES)
    args = parser.parse_args()
    results = {name: run(name, args.runs, args.overrides) for name in args.only}
    seed = {s["seed"] for s in results.values()}
    first = next(iter(results.values()))
    publish(
        f"Seed {', '.join(map(str, sorted(seed)))}; {first['device']}; {first['train_samples']:,} training samples "
        "per run.",
        ["method", "trainable params", "val accuracy", "wall s", "train samples/s", "peak RSS MiB", "peak CUDA MiB"],
        [row(name, s) for name, s in results.items()],
        args.out,
    )


if __name__ == "__main__":
    main()
