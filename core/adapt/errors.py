"""Errors that the CLI prints as one message, without a traceback."""

from __future__ import annotations

from collections.abc import Sequence


class AdaptError(Exception):
    """A failure with a message meant for the user. `exit_code` is what the CLI returns."""

    exit_code = 1


class RecipeError(AdaptError):
    """The recipe (or a `--set` override) is invalid. Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, source: str, problems: Sequence[str] | None = None, what: str = "the recipe"):
        """`RecipeError(message)`: one problem, printed as it is (what a plugin raises: name the key,
        `"methods.bias-only.rate: must be below 1"`); `RecipeError(source, problems)`: every problem of a
        recipe file, under one line naming it."""
        if problems is None:
            self.source, self.problems = "", [source]
            super().__init__(source)
            return
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{source}: {count} problem{'s' if count != 1 else ''} in {what}"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class UsageError(AdaptError):
    """A command-line option has a value the command cannot use (`--device lots`): bad input, exit code 2."""

    exit_code = 2


class DataError(AdaptError):
    """The data or model a recipe names is missing or not as the recipe says (a file, a dataset, a split,
    a column, `data.preprocess`, a hub id not in the cache): bad input, like a bad recipe."""

    exit_code = 2


class PluginError(AdaptError):
    """An exception raised inside a plugin's hook, attributed to that plugin and hook."""

    def __init__(self, plugin: str, hook: str, error: BaseException):
        self.plugin = plugin
        self.hook = hook
        self.error = error
        detail = str(error) or type(error).__name__
        super().__init__(f"plugin '{plugin}' failed in {hook}: {type(error).__name__}: {detail}")
