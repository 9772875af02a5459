"""Whether a recipe may continue a checkpoint: a change that alters the training trajectory is refused,
so a resumed run is the run that was interrupted, not a different one that happens to share its folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapt.errors import AdaptError

if TYPE_CHECKING:
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import Recipe

# What may change between the interrupted run and its resume: when to log, evaluate and checkpoint, how
# many loader workers, what to do about a non-finite loss, the output options and infrastructure plugins.
HARMLESS = (
    "train.eval_every",
    "train.eval_batch_size",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.nonfinite",
    "train.max_nonfinite_skips",
    "train.num_workers",
    "output.",
    "plugins.",
)


class ResumeError(AdaptError):
    exit_code = 2


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def trajectory_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in the checkpoint, value now) for every changed key that is not harmless."""
    before, after = flatten(saved), flatten(now)
    changed = []
    for key in sorted(set(before) | set(after)):
        if key.startswith(HARMLESS) or key in HARMLESS:
            continue
        if before.get(key) != after.get(key):
            changed.append((key, before.get(key, "(not set)"), after.get(key, "(not set)")))
    return changed


def check_resumable(recipe: Recipe, checkpoint: Path, catalogue: Catalogue) -> Recipe:
    """Raise ResumeError listing each key whose change would alter the trajectory (old and new values).
    Returns the recipe to resume with: with `batch_size = "auto"`, the micro-batch the checkpoint trained with."""
    from adapt.recipe.loader import load_recipe
    from adapt.run.checkpoint import RECIPE
    from adapt.train.autobatch import with_batch

    saved = load_recipe(checkpoint / RECIPE, catalogue.infos, broken=catalogue.broken, check_data=False, notes=[])
    if recipe.train.batch_size == "auto" and isinstance(saved.train.batch_size, int):
        recipe = with_batch(recipe, saved.train.batch_size)
    changes = trajectory_changes(saved.to_dict(), recipe.to_dict())
    if changes:
        lines = "\n".join(f"  - {key}: {old!r} in the checkpoint, {new!r} now" for key, old, new in changes)
        raise ResumeError(
            f"--resume: the recipe differs from the one {checkpoint} was trained with, in keys that change the "
            f"training, so it would not continue the same run:\n{lines}\nRestore them to resume, or start again "
            "with --set output.overwrite=true. (eval_every, log_every, checkpoint_every, keep_checkpoints, "
            "nonfinite, num_workers, eval_batch_size, [output] and [plugins] may change.)"
        )
    return recipe
