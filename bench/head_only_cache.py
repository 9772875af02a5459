"""Head-only training with and without the backbone feature cache: seconds per epoch.

HF_HUB_OFFLINE=1 python bench/head_only_cache.py [--rows 8000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import run_recipe


def run(rows: int, epochs: int, cache: bool, out: Path) -> dict:
    overrides = {
        "data.max_train_samples": rows,
        "train.epochs": epochs,
        "train.eval_every": 10**9,
        "methods.head-only.cache_features": str(cache).lower(),
    }
    return run_recipe("recipes/head-only-sst2.toml", out, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {cache: run(args.rows, args.epochs, cache, Path(tmp) / str(cache)) for cache in (True, False)}
    print(f"\nhead-only, {args.rows} rows, {args.epochs} epochs\n")
    print("| feature cache | seconds per epoch | val accuracy | peak RSS MiB |")
    print("| --- | --- | --- | --- |")
    for cache in (True, False):
        s = results[cache]
        epochs = " / ".join(f"{x:.1f}" for x in s["epoch_seconds"])
        label = "on" if cache else "off"
        print(f"| {label} | {epochs} | {s['eval']['accuracy']:.4f} | {s['memory']['peak_rss_mib']:.0f} |")
    on, off = results[True]["epoch_seconds"][1:], results[False]["epoch_seconds"][1:]
    print(f"\nepochs after the first: {sum(off) / sum(on):.1f}x faster with the cache")


if __name__ == "__main__":
    main()
