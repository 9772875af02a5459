"""Kill a real run with SIGKILL right after its second checkpoint, resume it with `adapt run --resume`, and
compare it with the same recipe run without interruption: validation metrics, and every tensor of the saved
adapter bit for bit. Also reports the checkpoint's size and the seconds each checkpoint took.

    HF_HUB_OFFLINE=1 python bench/resume_after_kill.py [--recipe recipes/lora-sst2.toml] [--rows 4000] [--every 40]

The runs are kept under runs/bench-resume/ for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import run_recipe


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def kill_after_checkpoint(recipe: Path, out: Path, overrides: dict, step: int) -> tuple[int, dict[str, int]]:
    """Start the run, SIGKILL it as soon as checkpoint `step` is complete; the return code and that
    checkpoint's files with their sizes."""
    args = [a for key, value in {**overrides, "output.dir": out}.items() for a in ("--set", f"{key}={value}")]
    process = subprocess.Popen([sys.executable, "-m", "adapt", "run", str(recipe), *args])
    checkpoint = out / "checkpoints" / f"step-{step}"
    while not (checkpoint / "checkpoint.json").is_file():
        if process.poll() is not None:
            raise SystemExit(f"the run ended (code {process.returncode}) before writing {checkpoint}")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    code = process.wait()
    files = {f.name: f.stat().st_size for f in sorted(checkpoint.iterdir()) if f.is_file()}
    return code, files


def adapter_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/lora-sst2.toml"))
    parser.add_argument("--rows", type=int, default=4000, help="training rows (one epoch)")
    parser.add_argument("--every", type=int, default=40, help="train.checkpoint_every")
    args = parser.parse_args()
    root = Path("runs/bench-resume")
    overrides = {
        "data.max_train_samples": args.rows,
        "train.checkpoint_every": args.every,
        "output.overwrite": "true",
        "plugins.disable": '["progress"]',
    }
    reference = run_recipe(args.recipe, root / "reference", overrides)
    killed_dir = root / "killed"
    code, files = kill_after_checkpoint(args.recipe, killed_dir, overrides, 2 * args.every)
    marker = json.loads((killed_dir / ".adapt-run.json").read_text())
    killed_at = f"status {marker['status']!r}, newest checkpoint step-{2 * args.every}"
    resumed = run_recipe(args.recipe, killed_dir, {**overrides, "output.overwrite": "false"}, extra=["--resume"])
    a, b = adapter_tensors(root / "reference"), adapter_tensors(killed_dir)
    equal = sorted(a) == sorted(b) and all(a[name].equal(b[name]) for name in a)
    metric = next(iter(reference["eval"]))
    print(f"\n{args.recipe}, {args.rows} training rows, checkpoint every {args.every} steps")
    print(f"killed with SIGKILL after checkpoint step-{2 * args.every} (exit code {code}); folder: {killed_at}")
    print("\n| run | steps | val " + metric + " | adapter tensors | train seconds | checkpoints written |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, s in (("uninterrupted", reference), ("killed + --resume", resumed)):
        same = "reference" if s is reference else ("bitwise equal" if equal else "DIFFERENT")
        print(
            f"| {label} | {s['steps']} | {s['eval'][metric]:.4f} | {same} | {s['train_seconds']:.1f} "
            f"| {s['checkpoints']['count']} |"
        )
    size = sum(files.values())
    print(f"\ncheckpoint step-{2 * args.every}: {size / 2**20:.2f} MiB in {len(files)} files:")
    for name, n in files.items():
        print(f"  {name}: {n / 2**10:.1f} KiB")
    print(f"seconds per checkpoint (mean over the uninterrupted run's): {reference['checkpoints']['seconds_mean']:.3f}")
    print(f"eval identical: {reference['eval'] == resumed['eval']}; adapter bitwise equal: {equal}")


if __name__ == "__main__":
    main()
