"""adapt against HF Trainer + PEFT, configured as well as it can be, side by side in one invocation.

    HF_HUB_OFFLINE=1 python bench/peers.py [--pairs 3] [--rows 8000] [--precision fp32 [bf16]] [--against REV]

Both train the default recipe's config (recipes/lora-sst2.toml: MiniLM-L6, LoRA r=8 alpha 16 dropout 0 on
query/key/value/dense, lr 1e-3, weight decay 0.01, 6% linear warm-up, batch 32, max_length 128, seed 42) on
the same `--rows` seeded SST-2 rows for one epoch, and are evaluated on the 872 validation rows. The peer is
given what a careful user would set: `group_by_length`, dynamic padding (`DataCollatorWithPadding`), the same
precision, the same AdamW implementation (`adamw_torch_fused`, as adapt uses on every device), no evaluation
or saving during training. Runs alternate A/B/A/B, each in a fresh process, so drift in the machine's speed
falls on both. Train samples/s are each tool's own figure over its training loop (model loading and the final
evaluation excluded). Useful FLOP/s counts matmul work on real (unpadded) tokens, as a share of the matmul
peak this script measures first at the same precision. `--against REV` adds adapt at git revision REV (checked
out in a temporary worktree) to each pair, so a change is measured against what it changed, side by side (the two
adapts take turns at going first); `--only-adapt` leaves HF Trainer out of such a comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import TRAINING_ONLY, cpu_model, publish, run_recipe

RECIPE = Path("recipes/lora-sst2.toml")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def run_adapt(rows: int, precision: str, out: Path, source: Path | None = None) -> dict:
    summary = run_recipe(
        RECIPE,
        out,
        {
            "data.max_train_samples": rows,
            "train.precision": precision,
            **TRAINING_ONLY,
        },
        source=source,
    )
    return {
        "samples_per_second": summary["train_samples_per_second"],
        "accuracy": summary["eval"]["accuracy"],
        "peak_mib": summary["memory"]["peak_rss_mib"],
        "flops_share": summary.get("throughput", {}).get("useful_flops_share"),
        "train_seconds": summary["train_seconds"],
    }


def run_peer(rows: int, precision: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = out / "peer.json"
    command = [sys.executable, __file__, "--peer-worker", str(rows), precision, str(result)]
    subprocess.run(command, check=True)
    return json.loads(result.read_text())


def peer_worker(rows: int, precision: str, result: Path) -> None:
    """HF Trainer + PEFT on the recipe's config; writes its figures to `result`."""
    import numpy as np
    from datasets import load_dataset
    from huggingface_hub import snapshot_download
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    folder = snapshot_download("nyu-mll/glue", repo_type="dataset", local_files_only=True)
    splits = load_dataset(folder, "sst2")
    train = splits["train"].shuffle(seed=42).select(range(rows))  # the rows adapt's max_train_samples picks
    tokenizer = AutoTokenizer.from_pretrained(MODEL, local_files_only=True)

    def encode(batch):
        features = tokenizer(batch["sentence"], truncation=True, max_length=128)
        features["length"] = [len(ids) for ids in features["input_ids"]]  # for the sampler, not recomputed
        return features

    train = train.map(encode, batched=True, remove_columns=["sentence", "idx"])
    evaluation = (
        splits["validation"].map(encode, batched=True, remove_columns=["sentence", "idx"]).remove_columns("length")
    )
    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=2, local_files_only=True)
    lora = LoraConfig(
        task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "key", "value", "dense"]
    )
    model = get_peft_model(model, lora)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            learning_rate=1e-3,
            weight_decay=0.01,
            warmup_steps=0.06,  # a float below 1 is a ratio of the training steps
            lr_scheduler_type="linear",
            num_train_epochs=1,
            optim="adamw_torch_fused",
            train_sampling_strategy="group_by_length",
            length_column_name="length",
            bf16=precision == "bf16",
            use_cpu=True,
            seed=42,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
        )

        def accuracy(prediction):
            return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy,
        )
        metrics = trainer.train().metrics
        evaluated = trainer.evaluate()
    result.write_text(
        json.dumps(
            {
                "samples_per_second": metrics["train_samples_per_second"],
                "accuracy": evaluated["eval_accuracy"],
                "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "flops_share": None,
                "train_seconds": metrics["train_runtime"],
            }
        )
    )


@contextlib.contextmanager
def worktree(revision: str | None) -> Iterator[Path | None]:
    """A temporary git worktree of `revision` (None: no worktree), removed afterwards."""
    if revision is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapt"
        subprocess.run(["git", "worktree", "add", "--detach", str(folder), revision], check=True)
        try:
            yield folder
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(folder)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument(
        "--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"], help="several: interleaved per pair"
    )
    parser.add_argument("--against", metavar="REV", help="also run adapt at this git revision, in each pair")
    parser.add_argument("--only-adapt", action="store_true", help="with --against: leave HF Trainer out")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-peers.md"))
    parser.add_argument("--peer-worker", nargs=3, metavar=("ROWS", "PRECISION", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_worker:
        rows, precision, result = args.peer_worker
        peer_worker(int(rows), precision, Path(result))
        return
    pairs: dict[str, list[tuple[dict, dict]]] = {p: [] for p in args.precision}
    earlier: dict[str, list[dict]] = {p: [] for p in args.precision}  # adapt at --against REV
    with tempfile.TemporaryDirectory() as tmp, worktree(args.against) as source:
        for i in range(args.pairs):
            for precision in args.precision:
                started = time.perf_counter()
                rev = Path(tmp) / f"rev-{precision}-{i}"
                if source is not None and i % 2:  # odd pairs run the revision first: no side always goes first
                    earlier[precision].append(run_adapt(args.rows, precision, rev, source))
                a = run_adapt(args.rows, precision, Path(tmp) / f"adapt-{precision}-{i}")
                if source is not None and not i % 2:
                    earlier[precision].append(run_adapt(args.rows, precision, rev, source))
                b = {"samples_per_second": float("nan"), "accuracy": float("nan"), "peak_mib": float("nan")}
                if not args.only_adapt:
                    b = run_peer(args.rows, precision, Path(tmp) / f"peer-{precision}-{i}")
                pairs[precision].append((a, b))
                was = f", adapt at {args.against} {earlier[precision][-1]['samples_per_second']:.1f}" if source else ""
                print(
                    f"{precision} pair {i + 1}: adapt {a['samples_per_second']:.1f}{was}, peer "
                    f"{b['samples_per_second']:.1f} samples/s ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    rows = []
    for precision, runs in pairs.items():
        for i, (a, b) in enumerate(runs, 1):
            share = f"{a['flops_share']:.0%}" if a["flops_share"] is not None else "–"
            if args.only_adapt:
                rows.append(f"| {precision} | {i} | {a['samples_per_second']:.1f} | – | | {a['accuracy']:.4f} | "
                            f"| {a['peak_mib']:,.0f} | | {share} |")
                continue
            rows.append(
                f"| {precision} | {i} | {a['samples_per_second']:.1f} | {b['samples_per_second']:.1f} "
                f"| {a['samples_per_second'] / b['samples_per_second']:.2f}× "
                f"| {a['accuracy']:.4f} | {b['accuracy']:.4f} "
                f"| {a['peak_mib']:,.0f} | {b['peak_mib']:,.0f} | {share} |"
            )
        if not args.only_adapt:
            ratio = statistics.median(a["samples_per_second"] / b["samples_per_second"] for a, b in runs)
            rows.append(f"| {precision} | **median** | | | **{ratio:.2f}×** | | | | | |")
        for i, ((a, _), old) in enumerate(zip(runs, earlier[precision], strict=bool(earlier[precision])), 1):
            rows.append(
                f"| {precision} | {i}: adapt at {args.against} | {old['samples_per_second']:.1f} | | "
                f"{a['samples_per_second'] / old['samples_per_second']:.2f}× this over it | {old['accuracy']:.4f} | "
                f"| {old['peak_mib']:,.0f} | | |"
            )
        if earlier[precision]:
            pairs_then = zip(runs, earlier[precision], strict=True)
            change = statistics.median(a["samples_per_second"] / o["samples_per_second"] for (a, _), o in pairs_then)
            rows.append(f"| {precision} | **median**, this over {args.against} | | | **{change:.2f}×** | | | | | |")
    if {"fp32", "bf16"} <= pairs.keys():
        speedup = statistics.median(
            bf[0]["samples_per_second"] / fp[0]["samples_per_second"]
            for fp, bf in zip(pairs["fp32"], pairs["bf16"], strict=True)
        )
        rows.append(f"| bf16 / fp32 (adapt, median of the pairs) | | | | **{speedup:.2f}×** | | | | | |")
    publish(
        f"{cpu_model()}; {args.rows:,} SST-2 rows, one epoch, batch 32; MiniLM-L6 + LoRA r=8. "
        f"`python bench/peers.py --pairs {args.pairs} --rows {args.rows} --precision {' '.join(args.precision)}"
        + (f" --against {args.against}" if args.against else "")
        + (" --only-adapt`" if args.only_adapt else "`"),
        [
            "precision",
            "pair",
            "adapt samples/s",
            "HF Trainer samples/s",
            "ratio",
            "adapt val acc",
            "HF val acc",
            "adapt peak MiB",
            "HF peak MiB",
            "adapt useful FLOP/s share",
        ],
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
