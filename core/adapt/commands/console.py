"""What every command shares: the consoles it prints to, the recipe it loads from its arguments, quiet libraries."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.text import Text

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def quiet_libraries() -> None:
    """The libraries' own progress bars and load reports would drown the run's progress display."""
    if os.environ.get("ADAPT_VERBOSE"):
        return
    import logging
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    # bitsandbytes warns on import, on CPUs with AVX512, that an optional kernel package is not installed.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def load_args(args: argparse.Namespace, saved: bool = False):
    """The catalogue and the validated recipe; `saved`: the recipe a run directory holds (lenient about
    infrastructure plugins uninstalled since)."""
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.run.report import show_notes

    catalogue = Catalogue.discover()
    for name, error in catalogue.broken.items():
        stderr.print(
            Text(f"warning: plugin '{name}' is broken and takes no part: {error}", style="yellow"), soft_wrap=True
        )
    notes: list[str] | None = [] if saved else None
    recipe = load_recipe(args.recipe, catalogue.infos, args.overrides, broken=catalogue.broken, notes=notes)
    show_notes(notes or [])
    return catalogue, recipe


def short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):  # an item of a list, e.g. an entity: its first field, then the others
        first, *rest = (short(v) for v in value.values())
        return f"{first} ({' '.join(rest)})" if rest else first
    return str(value)
