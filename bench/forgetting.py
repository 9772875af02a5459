"""Catastrophic forgetting on SST-2, measured: accuracy and representation drift per method and regulariser.

    HF_HUB_OFFLINE=1 python bench/forgetting.py [--rows 8000] [--reference FILE] [--set KEY=VALUE ...]

Each configuration is `adapt run` of a shipped recipe (same model, seed, one epoch on the same seeded rows).
Drift is measured by the `forgetting` plugin on held-out text of another kind: by default 256 news sentences
of CoNLL-2003's validation split (../shared/data), which no run trains on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import publish, run_recipe

CONFIGS = {
    "full": ("full", {}),
    "full + l2sp": ("full", {"methods.l2sp.weight": "0.1"}),
    "full + distill": ("full", {"methods.distill.weight": "1.0"}),
    "lora": ("lora", {}),
    "gradual-unfreezing": ("gradual-unfreezing", {}),
    "head-only": ("head-only", {}),
}


def row(name: str, s: dict) -> str:
    f, params = s["forgetting"], s["parameters"]
    return (
        f"| {name} | {params['trainable']:,} | {s['eval']['accuracy']:.4f} | {f['drift']:.4f} | "
        f"{f['similarity_correlation']:.4f} | {f['cosine']:.4f} | {s['train_seconds']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--reference", default="../shared/data/conll2003/validation.jsonl")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-forgetting.md"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-forgetting"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    common = {
        "data.max_train_samples": str(args.rows),
        "train.precision": '"fp32"',  # one arithmetic for all (full-sst2.toml alone would run bf16 on AMX CPUs)
        "plugins.forgetting.reference_file": f'"{args.reference}"',
        "plugins.forgetting.text_column": '"tokens"',
        **dict(item.split("=", 1) for item in args.overrides),
    }
    results = {}
    for name in args.only:
        recipe, settings = CONFIGS[name]
        folder = args.runs / name.replace(" + ", "-")
        results[name] = run_recipe(Path("recipes") / f"{recipe}-sst2.toml", folder, {**common, **settings})
    first = next(iter(results.values()))
    publish(
        f"Seed {first['seed']}; {first['device']}; precision {first.get('precision')}; {first['train_samples']:,} "
        f"training samples per run; drift on {first['forgetting']['reference_texts']} reference texts.",
        [
            "method",
            "trainable params",
            "val accuracy",
            "drift (1 - CKA)",
            "similarity correlation",
            "cosine to base",
            "train s",
        ],  # fmt: skip
        [row(name, s) for name, s in results.items()],
        args.out,
    )


if __name__ == "__main__":
    main()
