"""Head-only training with and without the feature cache (the frozen-prefix cache past the last block, stored as
float16 or float32): seconds per epoch, accuracy, the cache's size.

HF_HUB_OFFLINE=1 python bench/head_only_cache.py [--rows 8000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import run_recipe

CASES = [(True, "float16"), (True, "float32"), (False, "float16")]


def run(rows: int, epochs: int, cache: bool, dtype: str, out: Path) -> dict:
    overrides = {
        "data.max_train_samples": rows,
        "train.epochs": epochs,
        "train.eval_every": 10**9,
        "methods.head-only.cache_features": str(cache).lower(),
        "methods.head-only.cache_dtype": dtype,
    }
    return run_recipe("recipes/head-only-sst2.toml", out, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {case: run(args.rows, args.epochs, *case, Path(tmp) / "-".join(map(str, case))) for case in CASES}
    print(f"\nhead-only, {args.rows} rows, {args.epochs} epochs\n")
    print("| feature cache | seconds per epoch | later epochs vs no cache | val accuracy | cache MiB | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    off = results[(False, "float16")]["epoch_seconds"][1:]
    for cache, dtype in CASES:
        s = results[(cache, dtype)]
        epochs = " / ".join(f"{x:.1f}" for x in s["epoch_seconds"])
        label = f"on, {dtype}" if cache else "off"
        speed = f"{sum(off) / sum(s['epoch_seconds'][1:]):.1f}x" if cache else "1x"
        size = f"{s['head-only']['mib']:.0f}" if cache else "–"
        print(
            f"| {label} | {epochs} | {speed} | {s['eval']['accuracy']:.4f} | {size} "
            f"| {s['memory']['peak_rss_mib']:,.0f} |"
        )


if __name__ == "__main__":
    main()
