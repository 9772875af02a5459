"""Compare the adaptation methods on SST-2 and print Markdown tables: every method, LoRA's initialisations, and
the PEFT methods of a causal LM.

    HF_HUB_OFFLINE=1 python bench/methods.py [--table methods|inits|sft] [--only NAME ...] [--set KEY=VALUE ...]

Every run of a table uses the same model (MiniLM-L6), data slice, seed, batch and budget: "methods" and "inits" the
sequence-classification recipe, "sft" the instruction-tuning recipe (MiniLM as a decoder, SST-2 reviews as prompts);
accuracy is on the 872-row validation split. A method whose recipe is not in recipes/ is the LoRA recipe with its
[methods] table replaced (written to the runs folder), at the learning rate its authors use for it. `--set`
overrides go to every run (e.g. --set data.max_train_samples=40000 for the recipes' own slice).
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from common import cpu_model, publish, run_recipe

ATTENTION = ["query", "key", "value", "dense"]
LR = "train.learning_rate"
FEED_FORWARD = ["output.dense"]
IA3_OPTIONS = {"target_modules": ["key", "value", *FEED_FORWARD], "feedforward_modules": FEED_FORWARD}
IA3 = {"peft": {"method": "ia3", **IA3_OPTIONS}}
# name -> (recipe in recipes/, the [methods] tables that replace the recipe's or None, overrides)
METHODS: dict[str, tuple[str, dict[str, Any] | None, dict[str, Any]]] = {
    "lora": ("lora-sst2", None, {}),
    "dora": ("lora-sst2", None, {"methods.lora.use_dora": "true"}),
    "ia3": ("lora-sst2", IA3, {LR: 1e-2}),
    "prompt_tuning": (
        "lora-sst2", {"peft": {"method": "prompt_tuning", "num_virtual_tokens": 20}}, {LR: 3e-2}
    ),
    "p_tuning": (
        "lora-sst2",
        {"peft": {"method": "p_tuning", "num_virtual_tokens": 20, "encoder_hidden_size": 128}},
        {LR: 1e-2},
    ),
    "loha": ("lora-sst2", {"peft": {"method": "loha", "r": 8, "alpha": 16, "target_modules": ATTENTION}}, {}),
    "lokr": ("lora-sst2", {"peft": {"method": "lokr", "r": 8, "alpha": 16, "target_modules": ATTENTION}}, {}),
    "vera": ("lora-sst2", {"peft": {"method": "vera", "r": 256, "target_modules": ATTENTION}}, {LR: 5e-3}),
    "oft": ("lora-sst2", {"peft": {"method": "oft", "r": 0, "oft_block_size": 32, "target_modules": ATTENTION}}, {}),
    "fourierft": (
        "lora-sst2",
        {"peft": {"method": "fourierft", "n_frequency": 1000, "scaling": 150.0, "target_modules": ATTENTION}},
        {LR: 1e-2},
    ),
    "ln_tuning": ("lora-sst2", {"peft": {"method": "ln_tuning", "target_modules": ["LayerNorm"]}}, {LR: 5e-3}),
    "adapters": ("adapters-sst2", None, {}),
    "head-only": ("head-only-sst2", None, {}),
    "gradual-unfreezing": ("gradual-unfreezing-sst2", None, {}),
    "int8-lora": ("int8-lora-sst2", None, {}),
    "full": ("full-sst2", None, {}),
}  # fmt: skip
INITS = {
    init: ("lora-sst2", None, {"methods.lora.init": f'"{init}"'})
    for init in ("default", "gaussian", "pissa", "olora", "eva", "corda")
}
# CorDA's statistics need per-token inputs; the pooler's dense layer reads the first token only
INITS["corda"][2]["methods.lora.exclude_modules"] = '["pooler.dense"]'
SFT = {
    "lora": ("lora-sst2-sft", None, {}),
    "ia3": ("lora-sst2-sft", IA3, {LR: 1e-2}),
    "prefix_tuning": (
        "lora-sst2-sft", {"peft": {"method": "prefix_tuning", "num_virtual_tokens": 20}}, {LR: 1e-2}
    ),
    "prompt_tuning": (
        "lora-sst2-sft", {"peft": {"method": "prompt_tuning", "num_virtual_tokens": 20}}, {LR: 3e-2}
    ),
}  # fmt: skip
TABLES = {"methods": METHODS, "inits": INITS, "sft": SFT}


def recipe_for(name: str, recipe: str, methods: dict[str, Any] | None, folder: Path) -> Path:
    """The recipe file of one row: the one in recipes/, or a copy of it with other [methods] tables."""
    source = Path("recipes") / f"{recipe}.toml"
    if methods is None:
        return source
    data = tomllib.loads(source.read_text())
    data["methods"] = methods
    folder.mkdir(parents=True, exist_ok=True)
    derived = folder / f"{recipe}-{name}.toml"
    derived.write_text(tomli_w.dumps(data))
    return derived


def run(table: str, name: str, runs: Path, overrides: list[str]) -> dict:
    recipe, methods, settings = TABLES[table][name]
    path = recipe_for(name, recipe, methods, runs / "recipes")
    summary = run_recipe(path, runs / table / name, {**settings, **dict(item.split("=", 1) for item in overrides)})
    summary["learning_rate"] = settings.get("train.learning_rate")
    return summary


def row(name: str, s: dict, table: str) -> str:
    params, memory = s["parameters"], s["memory"]
    cuda = f" {memory['peak_cuda_mib']:,.0f} |" if "peak_cuda_mib" in memory else ""
    metric = s["eval"]["accuracy"] if table != "sft" else s["eval"]["token_accuracy"]
    lr = f"{s['learning_rate']:g}" if s["learning_rate"] else "recipe's"
    return (
        f"| {name} | {params['trainable']:,} ({params['trainable_percent']:.2f}%) | {lr} | {metric:.4f} "
        f"| {s['process_seconds']:.0f} | {s['train_samples_per_second']:.0f} | {memory['peak_rss_mib']:,.0f} |{cuda}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=list(TABLES), default="methods")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/bench-methods-TABLE.md")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-methods"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME")
    args = parser.parse_args()
    names = args.only or list(TABLES[args.table])
    unknown = sorted(set(names) - set(TABLES[args.table]))
    if unknown:
        parser.error(f"--only: {', '.join(unknown)} not in the {args.table} table ({', '.join(TABLES[args.table])})")
    results = {name: run(args.table, name, args.runs, args.overrides) for name in names}
    first = next(iter(results.values()))
    metric = "val token accuracy" if args.table == "sft" else "val accuracy"
    columns = ["method", "trainable params", "lr", metric, "wall s", "train samples/s", "peak RSS MiB"]
    if "peak_cuda_mib" in first["memory"]:
        columns.append("peak CUDA MiB")
    publish(
        f"{cpu_model()}; {first['device']}; seed {first['seed']}; {first['train_samples']:,} training samples per run; "
        f"overrides: {' '.join(args.overrides) or 'none'}.",
        columns,
        [row(name, s, args.table) for name, s in results.items()],
        args.out or Path(f"runs/bench-methods-{args.table}.md"),
    )


if __name__ == "__main__":
    main()
