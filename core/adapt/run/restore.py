"""Loading a finished run back: its recipe, its plugins' saved state and its artifacts (for `adapt eval`,
`adapt predict` and `adapt export`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapt.errors import AdaptError
from adapt.plugin.hooks import Hooks
from adapt.plugin.manager import Catalogue
from adapt.run.context import Run


class UntrustedCode(AdaptError):
    """A run directory's recipe would run code (`data.preprocess`) that the user has not agreed to run."""

    exit_code = 2


def missing_plugins(run_dir: Path, catalogue: Catalogue) -> None:
    """The head and method plugins the run was trained with (summary.json records where each came from) that
    are not installed here: one message with what to install, instead of 'no method plugin named ...'."""
    try:
        recorded = json.loads((run_dir / "summary.json").read_text()).get("plugins") or {}
    except (OSError, ValueError, AttributeError):
        return  # an older or unfinished run: the recipe's own check names the plugin
    missing = []
    for name, origin in recorded.items():
        if not isinstance(origin, dict) or origin.get("kind") not in ("head", "method") or name in catalogue.infos:
            continue
        dist, version = origin.get("distribution"), origin.get("version")
        line = f"'{name}' ({origin['kind']}) from {dist or 'an unknown distribution'} {version or ''}".strip()
        if dist:
            line += f": pip install '{dist}=={version}'" if version else f": pip install {dist}"
        missing.append(line)
    if missing:
        raise MissingPlugins(
            f"RUN_DIR: '{run_dir}' was trained with plugins that are not installed here: {'; '.join(missing)}"
        )


class MissingPlugins(AdaptError):
    exit_code = 2


def refuse_untrusted_model_code(recipe: Any, run_dir: Path, trusted: bool) -> None:
    """A run directory's recipe that loads its model with `trust_remote_code` runs code that the model's folder or
    hub repository ships: only with the command line's consent (`--trust-remote-code`)."""
    if recipe.model.trust_remote_code and not trusted:
        raise UntrustedCode(
            f"RUN_DIR: the recipe of '{run_dir}' sets model.trust_remote_code = true: loading '{recipe.model.name}' "
            "would run the Python code that model ships. Opening a run directory runs no code unasked; if you trust "
            "that code, run again with --trust-remote-code"
        )


def open_run(
    run_dir: Path,
    catalogue: Catalogue,
    overrides: Sequence[str] = (),
    splits: str | None = "eval",
    trust_preprocess: bool = False,
    trust_remote_code: bool = False,
) -> tuple[Run, Hooks]:
    """The run in `run_dir` with its trained model, ready for inference on the accelerator's device.

    `splits` as for `start_run`: "eval" loads the recipe's eval split, None no data at all. A recipe naming
    `data.preprocess` (code, which a copied run directory brings with it) is refused unless `trust_preprocess`, and
    one setting `model.trust_remote_code` unless `trust_remote_code`: before anything of the model is read."""
    from adapt.model.build import restore_model, start_run
    from adapt.recipe.loader import load_recipe, output_override
    from adapt.run.report import show_notes
    from adapt.run.rundir import describe_stop, has_trained_model

    recipe_file = run_dir / "recipe.toml"
    if not recipe_file.is_file():
        raise AdaptError(f"RUN_DIR: '{run_dir}' holds no recipe.toml; give a directory written by `adapt run`")
    if not has_trained_model(run_dir):
        raise AdaptError(
            f"RUN_DIR: the run in '{run_dir}' did not finish ({describe_stop(run_dir)}), so no trained model was "
            f"saved; continue it with `adapt run {run_dir} --resume`"
        )
    missing_plugins(run_dir, catalogue)
    fixed = [output_override(run_dir)]
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
    refuse_untrusted_model_code(recipe, run_dir, trust_remote_code)
    if recipe.data.preprocess and not trust_preprocess:
        raise UntrustedCode(
            f"RUN_DIR: the recipe of '{run_dir}' runs Python code on every row: data.preprocess = "
            f"'{recipe.data.preprocess}'. Opening a run directory runs no code unasked; if you trust that file, "
            "run again with --trust-preprocess"
        )
    if not recipe.output.save_artifacts:
        raise AdaptError(f"RUN_DIR: the recipe of '{run_dir}' set output.save_artifacts = false; nothing to load")
    run, hooks = start_run(recipe, catalogue, splits=splits)
    restore_model(run, hooks, run_dir)
    run.model = run.accelerator.prepare_model(run.model, evaluation_mode=True)
    run.model.eval()
    return run, hooks
