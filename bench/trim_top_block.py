"""What `task.trim_top_block` saves: the default recipe with the top block trimmed and whole, side by side.

    HF_HUB_OFFLINE=1 python bench/trim_top_block.py [--pairs 3] [--rows 4000] [--precision fp32] [--recipe lora-sst2]
                                                   [--out FILE.md]

Each pair runs the recipe trimmed and whole, in fresh processes, one after the other (so drift in the machine's
speed falls on both). Per run: training samples/s, the FLOPs per token that the run's FLOP counter found in its first
micro-batch, and validation accuracy; the median ratio of the pairs' samples/s closes the table. Dropout draws masks
for fewer rows in a trimmed block, so the two runs' random numbers differ after the first step: accuracies agree to
noise, not to the last digit (the outputs and gradients themselves agree to rounding: tests/test_trim.py).
"""

from __future__ import annotations

from common import cpu_model, publish, run_switched, switch_arguments, switch_pairs


def main() -> None:
    args = switch_arguments(__doc__, rows=4000, recipe="lora-sst2", out="runs/bench-trim-top-block.md")
    results, ratio = switch_pairs(args.pairs, lambda on, out: run_switched(args, "task.trim_top_block", on, out))
    assert all(r["throughput"]["trimmed_top_block"] is trim for runs in results for trim, r in runs.items())
    rows = [
        f"| {pair} | {'trimmed' if trim else 'whole'} | {r['samples_per_second']:.1f} | "
        f"{r['throughput']['flops_per_token'] / 1e6:.1f} | {r['eval']['accuracy']:.4f} |"
        for pair, runs in enumerate(results, 1)
        for trim, r in runs.items()
    ]
    rows.append(f"| **median** | trimmed / whole | **{ratio:.2f}x** | | |")
    intro = (
        f"{cpu_model()}; recipes/{args.recipe}.toml, {args.rows} rows, 1 epoch, {args.precision}, "
        f"top block trimmed and whole in alternating fresh processes"
    )
    publish(intro, ["pair", "top block", "train samples/s", "MFLOP per token", "val accuracy"], rows, args.out)


if __name__ == "__main__":
    main()
