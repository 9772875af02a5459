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


class DamagedCheckpoint(UsageError):
    """A checkpoint whose files are not those written: resuming from it would not be the interrupted run."""


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """{file: its bytes and sha256} of every file in a checkpoint folder being written."""
    import hashlib

    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != INFO):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        found[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return found


def check_files(checkpoint: Path, info: dict[str, Any]) -> None:
    """Every file the checkpoint was written with, as written (checkpoints before manifests are taken as they are)."""
    written = info.get("files")
    if written is None:
        return
    now = {k: v for k, v in manifest(checkpoint).items() if k in written}
    for name, expected in written.items():
        found = now.get(name)
        if found is None:
            raise DamagedCheckpoint(_damaged(checkpoint, f"{name} is missing"))
        if found != expected:
            size = f"{found['bytes']:,} bytes of the {expected['bytes']:,} written"
            what = size if found["bytes"] != expected["bytes"] else "the same size but other contents"
            raise DamagedCheckpoint(_damaged(checkpoint, f"{name} has {what}"))


def _damaged(checkpoint: Path, what: str) -> str:
    others = [c for c in checkpoints(checkpoint.parent.parent) if c != checkpoint]
    earlier = f"resume from an earlier one (--resume {others[-1]}) or" if others else ""
    return (
        f"--resume: checkpoint {checkpoint} is damaged ({what}); resuming from it would not be the interrupted run: "
        f"{earlier} start again with --set output.overwrite=true"
    )


def data_fingerprint(run: Run) -> str | None:
    """A hash of the training split's rows as the run reads them (after `data.preprocess` and the seeded subset):
    their values, not the files' dates, so a copied or touched file is the same data and an edited label is not."""
    import hashlib

    split = run.dataset.get("train") if run.dataset is not None else None
    if split is None:
        return None
    digest = hashlib.sha256()
    for batch in split.with_format(None).iter(batch_size=4096):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def check_data(checkpoint: Path, info: dict[str, Any], now: str | None) -> None:
    saved = info.get("data_fingerprint")
    if saved is not None and now is not None and saved != now:
        raise UsageError(
            f"--resume: the training data is not what {checkpoint} was trained on (its rows hash to {now}, then to "
            f"{saved}: a data file changed since); resuming would not be the interrupted run: restore the data, or "
            "start again with --set output.overwrite=true"
        )


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
        self._data_fingerprint: str | None = None
        run.accelerator.register_save_state_pre_hook(_only_trainable)
        if run.is_main_process and self.root.is_dir():
            for stale in self.root.glob(".step-*.tmp"):  # left by a process killed while writing
                shutil.rmtree(stale, ignore_errors=True)

    @property
    def enabled(self) -> bool:
        return self.keep > 0

    @property
    def data_fingerprint(self) -> str | None:
        """The training data's hash, computed once: written into every checkpoint, checked on resume."""
        if self._data_fingerprint is None:
            self._data_fingerprint = data_fingerprint(self.run)
        return self._data_fingerprint

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
        except Exception as exc:
            # a full disk is an OSError, torch.save's writer's RuntimeError or safetensors' SafetensorError
            if not isinstance(exc, (OSError, RuntimeError)) and type(exc).__name__ != "SafetensorError":
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            previous = newest_checkpoint(run.output_dir)
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[-1]
            where = exc.filename if isinstance(exc, OSError) and exc.filename else tmp
            raise AdaptError(
                f"writing checkpoint {final} failed: {cause} ({where}); {kept}; "
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
        files = manifest(tmp)
        self.bytes = sum(entry["bytes"] for entry in files.values())
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
                "data_fingerprint": self.data_fingerprint,
                "files": files,
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
        check_files(checkpoint, info)
        check_data(checkpoint, info, self.data_fingerprint)
        self._check_weights(checkpoint)
        try:
            acc.load_state(str(checkpoint), strict=False)  # only trainable parameters were saved
            states = _load(checkpoint / TRAINER_STATE), _load(checkpoint / PLUGIN_STATES)
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises, name the checkpoint
            raise DamagedCheckpoint(_damaged(checkpoint, f"{type(exc).__name__}: {str(exc)[:300]}")) from None
        self.last_step = info["step"]
        return states

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
