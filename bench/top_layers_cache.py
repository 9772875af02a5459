"""top-layers (train the top k blocks and the head) with and without the frozen-prefix cache: seconds per epoch.

HF_HUB_OFFLINE=1 python bench/top_layers_cache.py [--rows 8000] [--epochs 3] [--train-last 2] [--recipe lora-sst2]
                                               [--precision fp32|bf16] [--whole-top-block]

Run it from the project root. The recipe's methods are replaced by `[methods.top-layers]` (train_last of
MiniLM's 6 blocks, the pooler and the classifier train); everything else but the learning rate is the recipe's.
It also prints the FLOP bound: the whole step's FLOPs over a served step's, the most any prefix cache could gain.
"""

from __future__ import annotations

import argparse
import tempfile
import tomllib
from pathlib import Path

import tomli_w
from common import TRAINING_ONLY, cpu_model, run_recipe


def run(args: argparse.Namespace, cache: bool, dtype: str, out: Path) -> dict:
    recipe = tomllib.loads((Path("recipes") / f"{args.recipe}.toml").read_text())
    recipe["methods"] = {"top-layers": {"train_last": args.train_last, "cache": cache, "cache_dtype": dtype}}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipe-top-layers.toml"
    path.write_text(tomli_w.dumps(recipe))
    overrides = {
        "data.max_train_samples": args.rows,
        "train.epochs": args.epochs,
        "train.learning_rate": args.learning_rate,
        **({"train.precision": f'"{args.precision}"'} if args.precision else {}),
        **({"task.trim_top_block": "false"} if args.whole_top_block else {}),
        **TRAINING_ONLY,
    }
    return run_recipe(path, out / "run", overrides)


def flop_bound(model_name: str, train_last: int, trim: bool, length: int = 32) -> tuple[float, float]:
    """MFLOP per token of one top-layers training step (batch 32 x `length`, the top block trimmed or not):
    (the whole step, the step with the frozen prefix served). No cache makes a later epoch faster than their ratio:
    it skips the prefix's forward pass, and every FLOP of the trained blocks' forward and backward passes stays."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForSequenceClassification

    from adapt.model.modeling import find_blocks
    from adapt.speed.trim import trim_top_block

    model = AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=2)
    if trim:
        trim_top_block(model)
    blocks = find_blocks(model)[1]
    prefix = [model.base_model.embeddings, *blocks[: len(blocks) - train_last]]
    for module in prefix:
        module.requires_grad_(False)
    ids = torch.randint(1000, 5000, (32, length))
    with FlopCounterMode(display=False) as whole:
        model(input_ids=ids, labels=torch.zeros(32, dtype=torch.long)).loss.backward()
    with FlopCounterMode(display=False) as skipped, torch.no_grad():
        hidden = prefix[0](input_ids=ids)
        for block in prefix[1:]:
            hidden = block(hidden)
    total, served = whole.get_total_flops(), whole.get_total_flops() - skipped.get_total_flops()
    return total / ids.numel() / 1e6, served / ids.numel() / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-last", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--recipe", default="lora-sst2")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="default: the recipe's")
    parser.add_argument("--whole-top-block", action="store_true", help="task.trim_top_block = false")
    args = parser.parse_args()
    cases = [(True, "float16"), (True, "float32"), (False, "float16")]
    with tempfile.TemporaryDirectory() as tmp:
        results = {case: run(args, *case, Path(tmp) / f"{case[0]}-{case[1]}") for case in cases}
    precision = results[cases[0]]["precision"]
    what = f"top-layers train_last={args.train_last}, {args.rows} rows, {args.epochs} epochs, {precision}"
    what += ", top block whole" if args.whole_top_block else ", top block trimmed"
    model_name = tomllib.loads((Path("recipes") / f"{args.recipe}.toml").read_text())["model"]["name"]
    total, served = flop_bound(model_name, args.train_last, trim=not args.whole_top_block)
    print(f"\n{cpu_model()}; {what}\n")
    print(
        f"FLOP bound: a served step does {served:.1f} of the whole step's {total:.1f} MFLOP per token, so no cache "
        f"makes a later epoch more than {total / served:.2f}x faster\n"
    )
    print("| prefix cache | seconds per epoch | later epochs vs no cache | val accuracy | cache MiB | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    off = results[(False, "float16")]["epoch_seconds"][1:]
    for cache, dtype in cases:
        s = results[(cache, dtype)]
        epochs = " / ".join(f"{x:.1f}" for x in s["epoch_seconds"])
        stats = s["top-layers"]["cache"]
        label = f"on, {dtype}" if cache else "off"
        speed = f"{sum(off) / sum(s['epoch_seconds'][1:]):.2f}x" if cache else "1x"
        size = f"{stats['mib']:.0f}" if stats else "–"
        print(
            f"| {label} | {epochs} | {speed} | {s['eval']['accuracy']:.4f} | {size} "
            f"| {s['memory']['peak_rss_mib']:,.0f} |"
        )


if __name__ == "__main__":
    main()
