"""Loading a finished run back: its recipe, its plugins' saved state and its artifacts (for `adapt eval`,
`adapt predict` and `adapt export`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from adapt.errors import AdaptError
from adapt.hooks import Hooks
from adapt.manager import Catalogue
from adapt.types import Run


def open_run(
    run_dir: Path, catalogue: Catalogue, overrides: Sequence[str] = (), splits: str | None = "eval"
) -> tuple[Run, Hooks]:
    """The run in `run_dir` with its trained model, ready for inference on the accelerator's device.

    `splits` as for `start_run`: "eval" loads the recipe's eval split, None no data at all."""
    from adapt.build import restore_model, start_run
    from adapt.recipe import load_recipe
    from adapt.report import show_notes
    from adapt.rundir import describe_stop, has_trained_model

    recipe_file = run_dir / "recipe.toml"
    if not recipe_file.is_file():
        raise AdaptError(f"RUN_DIR: '{run_dir}' holds no recipe.toml; give a directory written by `adapt run`")
    if not has_trained_model(run_dir):
        raise AdaptError(
            f"RUN_DIR: the run in '{run_dir}' did not finish ({describe_stop(run_dir)}), so no trained model was "
            f"saved; continue it with `adapt run {run_dir} --resume`"
        )
    fixed = [f"output.dir={json.dumps(str(run_dir))}"]
    notes: list[str] = []
    recipe = load_recipe(
        recipe_file,
        catalogue.infos,
        [*fixed, *overrides],
        broken=catalogue.broken,
        check_data=splits is not None,
        notes=notes,
    )
    show_notes(notes)
    if not recipe.output.save_artifacts:
        raise AdaptError(f"RUN_DIR: the recipe of '{run_dir}' set output.save_artifacts = false; nothing to load")
    run, hooks = start_run(recipe, catalogue, splits=splits)
    restore_model(run, hooks, run_dir)
    run.model = run.accelerator.prepare_model(run.model, evaluation_mode=True)
    run.model.eval()
    return run, hooks
