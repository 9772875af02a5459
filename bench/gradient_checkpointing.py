"""Activation checkpointing on and off: peak memory, throughput and accuracy of the same run.

    HF_HUB_OFFLINE=1 python bench/gradient_checkpointing.py [--recipe recipes/lora-sst2.toml] [--rows 4000]
        [--batch-size 128]

On a CPU the peak is the process's resident memory (weights, gradients, optimizer state and activations
together); on a GPU, also the peak CUDA allocation.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import run_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/lora-sst2.toml"))
    parser.add_argument("--rows", type=int, default=4000, help="training rows (one epoch)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for on in (False, True):
            overrides = {
                "data.max_train_samples": args.rows,
                "train.batch_size": args.batch_size,
                "train.gradient_checkpointing": str(on).lower(),
                "train.eval_every": 10**9,
            }
            results[on] = run_recipe(args.recipe, Path(tmp) / str(on), overrides)
    metric = next(iter(results[False]["eval"]))
    print(f"\n{args.recipe}, {args.rows} training rows, batch {args.batch_size}, one epoch\n")
    print(f"| activation checkpointing | peak RSS MiB | peak CUDA MiB | train samples/s | val {metric} |")
    print("| --- | --- | --- | --- | --- |")
    for on, s in results.items():
        cuda = s["memory"].get("peak_cuda_mib", "–")
        print(
            f"| {'on' if on else 'off'} | {s['memory']['peak_rss_mib']:.0f} | {cuda} "
            f"| {s['train_samples_per_second']:.0f} | {s['eval'][metric]:.4f} |"
        )


if __name__ == "__main__":
    main()
