"""Checkpoints: what training changed, written atomically, read back for an exact resume.

`OUTPUT/checkpoints/step-N/` holds, through Accelerate's `save_state`: `model.safetensors` (only the
parameters that train, so a LoRA checkpoint is megabytes, not the base model), `optimizer.bin`,
`scheduler.bin` and one `random_states_{process}.pkl` per process (python, numpy, torch and CUDA RNG states
and the gradient-accumulation position); and, from adapt: `trainer_state.pt` (step, epoch, batches consumed,
samples, clocks, the log window), `plugin_states.pt` (each plugin's `adapt_checkpoint_state`), the recipe
as run and `checkpoint.json`. Every non-safetensors file loads with `torch.load(weights_only=True)`.

A checkpoint is written into `.step-N.tmp` and renamed once complete, so a crash or a full disk while writing
leaves the previous checkpoint as it was; only folders holding `checkpoint.json` count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adapt.errors import AdaptError, UsageError
from adapt.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from adapt.plugin.hooks import Hooks
    from adapt.run.context import Run

CHECKPOINTS = "checkpoints"
INFO = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"
PLUGIN_STATES = "plugin_states.pt"
RECIPE = "recipe.toml"
WEIGHTS = "model.safetensors"  # Accelerate's name for the model state in save_state
_STEP = re.compile(r"step-(\d+)")


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run directory, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.fullmatch(p.name)) and (p / INFO).is_file()]
    return [p for _, p in sorted(found)]


def newest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def read_info(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's `checkpoint.json`; an error naming the folder when it is not a complete checkpoint."""
    try:
        return json.loads((Path(checkpoint) / INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(
            f"--resume: '{checkpoint}' is not a complete checkpoint (no readable {INFO}); give a folder "
            f"OUTPUT/{CHECKPOINTS}/step-N, or --resume alone for the newest one"
        ) from None


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _fsync_tree(folder: Path) -> None:
    """Make the checkpoint durable before it becomes visible (a power cut must not leave it half-written)."""
    for path in [*sorted(folder.rglob("*")), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:  # some file systems cannot fsync a directory
            pass
        finally:
            os.close(fd)


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


class Checkpointer:
    """Writes and reads one run's checkpoints. Every process calls `save` and `load` together."""

    def __init__(self, run: Run, hooks: Hooks):
        self.run = run
        self.hooks = hooks
        self.root = run.output_dir / CHECKPOINTS
        self.keep = run.recipe.train.keep_checkpoints
        self.last_step: int | None = None
        self.seconds: list[float] = []
        self.bytes = 0
        run.accelerator.register_save_state_pre_hook(_only_trainable)
        if run.is_main_process and self.root.is_dir():
            for stale in self.root.glob(".step-*.tmp"):  # left by a process killed while writing
                shutil.rmtree(stale, ignore_errors=True)

    @property
    def enabled(self) -> bool:
        return self.keep > 0

    def save(self, state: dict[str, Any]) -> Path | None:
        """Write `state` (the loop's own) and everything else training changed as `step-N`; prune old ones."""
        run, acc = self.run, self.run.accelerator
        if not self.enabled or self.last_step == run.step:
            return None
        start = time.perf_counter()
        final = self.root / f"step-{run.step}"
        tmp = self.root / f".step-{run.step}.tmp"
        try:
            if run.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            acc.save_state(str(tmp), safe_serialization=True)  # every process writes its own RNG states
            plugin_states = self.hooks.checkpoint_state(run=run)
            acc.wait_for_everyone()
            if run.is_main_process:
                self._write_own(tmp, state, plugin_states)
                _fsync_tree(tmp)
                self._publish(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = newest_checkpoint(run.output_dir)
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            raise AdaptError(
                f"writing checkpoint {final} failed: {exc.strerror or exc} ({exc.filename or tmp}); {kept}; "
                "free space (or lower train.keep_checkpoints) and resume with --resume"
            ) from None
        acc.wait_for_everyone()
        self.last_step = run.step
        self.seconds.append(time.perf_counter() - start)
        return final

    def _write_own(self, tmp: Path, state: dict[str, Any], plugin_states: dict[str, Any]) -> None:
        import tomli_w

        run = self.run
        torch.save(state, tmp / TRAINER_STATE)
        torch.save(plugin_states, tmp / PLUGIN_STATES)
        atomic_write_text(tmp / RECIPE, tomli_w.dumps(run.recipe.to_dict()))
        self.bytes = _folder_bytes(tmp)
        atomic_write_json(  # written last: its presence marks the checkpoint complete
            tmp / INFO,
            {
                "step": run.step,
                "epoch": state["epoch"],
                "batches_in_epoch": state["batches_in_epoch"],
                "samples_seen": run.samples_seen,
                "num_processes": run.accelerator.num_processes,
                "bytes": self.bytes,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )

    def _publish(self, tmp: Path, final: Path) -> None:
        if final.exists():  # the same step saved again (after a resume): replace it whole
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        for stale in checkpoints(self.run.output_dir)[: -self.keep]:
            shutil.rmtree(stale, ignore_errors=True)

    def load(self, checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore what `save` wrote into the prepared model, optimizer, scheduler and RNGs; return the loop's
        own state and the plugins' states (for `Hooks.load_checkpoint_state`)."""
        acc = self.run.accelerator
        info = read_info(checkpoint)
        if info["num_processes"] != acc.num_processes:
            raise AdaptError(
                f"--resume: {checkpoint} was written by {info['num_processes']} processes and this run has "
                f"{acc.num_processes}; the data order and random states are per process, so resume with "
                f"{info['num_processes']}"
            )
        self._check_weights(checkpoint)
        acc.load_state(str(checkpoint), strict=False)  # only trainable parameters were saved
        self.last_step = info["step"]
        return _load(checkpoint / TRAINER_STATE), _load(checkpoint / PLUGIN_STATES)

    def _check_weights(self, checkpoint: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(checkpoint / WEIGHTS), framework="pt") as f:
            saved = set(f.keys())
        own = set(self.run.unwrapped_model.state_dict())  # Accelerate saves the model it was given, unwrapped
        unknown = sorted(saved - own)
        if unknown:
            raise AdaptError(
                f"--resume: {checkpoint} holds {len(unknown)} weights this model does not have "
                f"({', '.join(unknown[:3])}...); it was written for another model or methods"
            )
        rng = checkpoint / f"random_states_{self.run.accelerator.process_index}.pkl"
        if not rng.is_file():
            raise AdaptError(f"--resume: {checkpoint} lacks {rng.name}: the checkpoint is incomplete")

    def stats(self) -> dict[str, Any]:
        if not self.seconds:
            return {"count": 0}
        return {
            "count": len(self.seconds),
            "seconds_mean": round(sum(self.seconds) / len(self.seconds), 3),
            "bytes": self.bytes,
        }

    def remove_all(self) -> None:
        """After the run finished: checkpoints only serve resuming an unfinished run."""
        if self.run.is_main_process:
            shutil.rmtree(self.root, ignore_errors=True)


def _only_trainable(models: list[torch.nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
    """Accelerate's save_state pre-hook: keep only the parameters that train (frozen ones are the pretrained
    weights, or a quantised base rebuilt from them)."""
    for i, model in enumerate(models):
        names = {name for name, param in model.named_parameters() if param.requires_grad}
        weights[i] = {key: value for key, value in weights[i].items() if key in names}
