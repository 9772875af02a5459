"""What `task.logits_for_labels_only` saves in instruction tuning: the LM head's logits at the labelled (response)
positions only, against every position's, side by side.

    HF_HUB_OFFLINE=1 python bench/labelled_logits.py [--pairs 3] [--rows 2000] [--precision fp32]
                                                    [--recipe lora-sst2-sft] [--out FILE.md]

Each pair runs the recipe both ways in fresh processes, one after the other (so drift in the machine's speed falls
on both). Per run: training samples/s, the FLOPs per token that the run's FLOP counter found in its first
micro-batch, peak resident memory, and the eval loss and token accuracy (equal up to rounding: the losses and
gradients agree, tests/test_task_heads.py); the median ratio of the pairs' samples/s closes the table.
"""

from __future__ import annotations

from common import cpu_model, publish, run_switched, switch_arguments, switch_pairs


def main() -> None:
    args = switch_arguments(__doc__, rows=2000, recipe="lora-sst2-sft", out="runs/bench-labelled-logits.md")
    results, ratio = switch_pairs(
        args.pairs, lambda on, out: run_switched(args, "task.logits_for_labels_only", on, out)
    )
    rows = [
        f"| {pair} | {'labelled positions' if only else 'every position'} | {r['samples_per_second']:.1f} | "
        f"{r['throughput']['flops_per_token'] / 1e6:.1f} | {r['memory']['peak_rss_mib']:,.0f} | "
        f"{r['eval']['loss']:.4f} | {r['eval']['token_accuracy']:.4f} |"
        for pair, runs in enumerate(results, 1)
        for only, r in runs.items()
    ]
    rows.append(f"| **median** | labelled / every | **{ratio:.2f}x** | | | | |")
    intro = (
        f"{cpu_model()}; recipes/{args.recipe}.toml, {args.rows} rows, 1 epoch, {args.precision}, the LM head's "
        "logits at the labelled positions and at every position, in alternating fresh processes"
    )
    header = ["pair", "logits", "train samples/s", "MFLOP per token", "peak RSS MiB", "eval loss", "token accuracy"]
    publish(intro, header, rows, args.out)


if __name__ == "__main__":
    main()
