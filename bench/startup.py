"""Seconds from the command to the first training step, for the first and the second run of a recipe.

    HF_HUB_OFFLINE=1 python bench/startup.py [--recipe recipes/lora-sst2.toml]

The first run starts from an empty `datasets` cache (a temporary HF_DATASETS_CACHE): it converts the dataset
to Arrow and tokenises it. The second run of the same recipe finds both by fingerprint. Each run stops after
three steps; summary.json's `seconds_to_first_step` counts from the start of adapt's import.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import run_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/lora-sst2.toml"))
    args = parser.parse_args()
    overrides = {"train.max_steps": 3, "plugins.disable": '["progress", "plots", "forgetting"]'}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "datasets")
        runs = [run_recipe(args.recipe, Path(tmp) / f"run-{i}", overrides) for i in (1, 2)]
    print(f"\n{args.recipe}, {runs[0]['train_samples']:,} of the training rows seen (3 steps)\n")
    print("| run | seconds to the first step | whole command, s |")
    print("| --- | --- | --- |")
    for i, s in enumerate(runs, 1):
        label = "first (empty datasets cache)" if i == 1 else "second (same recipe)"
        print(f"| {label} | {s['seconds_to_first_step']:.1f} | {s['process_seconds']:.1f} |")


if __name__ == "__main__":
    main()
