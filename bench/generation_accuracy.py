"""How often a causal-lm run generates exactly the expected response: `adapt predict --file` on an eval
file, compared with the response column its recipe's `data.preprocess` derives from the same rows.

    HF_HUB_OFFLINE=1 python bench/generation_accuracy.py runs/lora-sst2-sft ../shared/data/sst2/dev.tsv
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from adapt.commands.console import quiet_libraries
from adapt.commands.predict import predict_run
from adapt.loading.files import load_file, preprocess
from adapt.plugin.manager import Catalogue
from adapt.recipe.loader import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("file")
    args = parser.parse_args()
    quiet_libraries()
    catalogue = Catalogue.discover()
    recipe = load_recipe(args.run_dir / "recipe.toml", catalogue.infos, ["output.overwrite=true"], check_data=False)
    column = recipe.table(recipe.head).response_column
    expected = preprocess(load_file(args.file, "file"), recipe.data.preprocess)[column]
    start = time.perf_counter()
    # the run is one this benchmark's user trained: its data.preprocess is their own code
    predictions = predict_run(args.run_dir, [], args.file, catalogue, trust_preprocess=True)
    seconds = time.perf_counter() - start
    generated = [p["generated"] for p in predictions]
    hits = sum(g.strip().lower() == e.strip().lower() for g, e in zip(generated, expected, strict=True))
    print(f"exact match {hits / len(expected):.4f} ({hits} of {len(expected)}) in {seconds:.1f} s")
    print("most frequent generations:", Counter(generated).most_common(5))


if __name__ == "__main__":
    main()
