"""The typed facade through which the core calls every hook, by keyword, with errors attributed.

An exception inside a hook implementation becomes one `PluginError` naming the plugin and the hook:
the implementation is found by matching the traceback's frames against the registered functions.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from adapt.errors import AdaptError, PluginError

if TYPE_CHECKING:
    import torch
    from datasets import DatasetDict

    from adapt.recipe.loader import Recipe
    from adapt.run.context import Run
    from adapt.types import Metrics, PluginInfo


def _code(function: Callable) -> Any:
    return getattr(getattr(function, "__func__", function), "__code__", None)


def culprit(exc: BaseException, impls: list[pluggy.HookImpl]) -> str:
    """The name of the plugin whose hook implementation raised `exc` (innermost frame wins)."""
    by_code = {_code(impl.function): impl.plugin_name for impl in impls}
    found = "unknown plugin"
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code in by_code:
            found = by_code[frame.f_code]
    return found


class Hooks:
    """One typed method per hook. The core never touches `pm.hook` directly."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._callers: dict[str, list[tuple[str, Any]]] = {}

    @contextmanager
    def _attributed(self, name: str, caller: Any) -> Iterator[None]:
        # AdaptErrors raised by plugins already carry a message for the user; keep them (and their exit code).
        try:
            yield
        except (AdaptError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":  # the device's limit, not the plugin's fault
                raise
            raise PluginError(culprit(exc, caller.get_hookimpls()), name, exc) from exc

    def _call(self, name: str, caller: Any = None, **kwargs: Any) -> Any:
        caller = caller or getattr(self.pm.hook, name)
        with self._attributed(name, caller):
            return caller(**kwargs)

    def _only(self, name: str, plugin: str) -> Any:
        """A caller of hook `name` that reaches only `plugin` (for per-method, ordered calls)."""
        target = self.pm.get_plugin(plugin)
        others = [p for p in self.pm.get_plugins() if p is not target]
        return self.pm.subset_hook_caller(name, remove_plugins=others)

    def _provided(self, name: str, result: Any, what: str) -> Any:
        if result is None:
            raise AdaptError(f"no plugin provides {name} ({what}); is the recipe's head installed and selected?")
        return result

    # discovery and configuration
    def plugin_info(self) -> PluginInfo | None:
        return self._call("adapt_plugin_info")

    def configure(self, *, recipe: Recipe) -> None:
        caller = self.pm.hook.adapt_configure
        with self._attributed("adapt_configure", caller):
            caller.call_historic(kwargs={"recipe": recipe})

    # model and data
    def head_modules(self, *, run: Run) -> list[str] | None:
        return self._call("adapt_head_modules", run=run)

    def model_load_kwargs(self, *, run: Run) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for contribution in reversed(self._call("adapt_model_load_kwargs", run=run)):
            for key, value in contribution.items():
                if key in merged and merged[key] is not value and merged[key] != value:
                    names = [i.plugin_name for i in self.pm.hook.adapt_model_load_kwargs.get_hookimpls()]
                    raise AdaptError(
                        f"model load argument '{key}' is set to different values by plugins implementing "
                        f"adapt_model_load_kwargs ({', '.join(names)}); these methods cannot be combined"
                    )
                merged[key] = value
        return merged

    def load_model(self, *, run: Run, load_kwargs: dict[str, Any]) -> torch.nn.Module:
        return self._provided(
            "adapt_load_model",
            self._call("adapt_load_model", run=run, load_kwargs=load_kwargs),
            "the task model",
        )

    def on_model_loaded(self, *, run: Run) -> None:
        self._call("adapt_on_model_loaded", run=run)

    def transform_model(self, *, run: Run, plugin: str) -> None:
        self._call("adapt_transform_model", self._only("adapt_transform_model", plugin), run=run)

    def encode(self, *, run: Run, dataset: DatasetDict) -> DatasetDict:
        return self._provided("adapt_encode", self._call("adapt_encode", run=run, dataset=dataset), "features")

    def make_collator(self, *, run: Run) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        return self._provided("adapt_make_collator", self._call("adapt_make_collator", run=run), "a collator")

    def param_groups(self, *, run: Run) -> list[dict[str, Any]]:
        return self._provided("adapt_param_groups", self._call("adapt_param_groups", run=run), "parameter groups")

    def make_optimizer(self, *, run: Run, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return self._provided(
            "adapt_make_optimizer",
            self._call("adapt_make_optimizer", run=run, param_groups=param_groups),
            "the optimizer",
        )

    def make_metrics(self, *, run: Run) -> Metrics:
        return self._provided("adapt_make_metrics", self._call("adapt_make_metrics", run=run), "metrics")

    # training loop
    def on_train_start(self, *, run: Run) -> None:
        self._call("adapt_on_train_start", run=run)

    def on_epoch_start(self, *, run: Run, epoch: int) -> None:
        self._call("adapt_on_epoch_start", run=run, epoch=epoch)

    def compute_loss(self, *, run: Run, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        return self._provided(
            "adapt_compute_loss",
            self._call("adapt_compute_loss", run=run, batch=batch, outputs=outputs),
            "the loss",
        )

    def loss_terms(self, *, run: Run, batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, torch.Tensor]:
        import torch

        terms: dict[str, torch.Tensor] = {}
        for plugin, caller in self._per_plugin("adapt_loss_terms"):
            for contribution in self._call("adapt_loss_terms", caller, run=run, batch=batch, outputs=outputs):
                for name, value in contribution.items():
                    if not isinstance(value, torch.Tensor) or value.numel() != 1:
                        shape = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else None
                        raise PluginError(
                            plugin,
                            "adapt_loss_terms",
                            TypeError(f"term '{name}' is {shape or type(value).__name__}, not a scalar tensor"),
                        )
                terms.update(contribution)
        return terms

    def _per_plugin(self, name: str) -> list[tuple[str, Any]]:
        """(plugin, caller reaching only it) for each implementation of hook `name`, in call order, built once:
        for hooks whose answers the core keeps or checks per plugin (loss terms run every micro-batch)."""
        if name not in self._callers:
            impls = getattr(self.pm.hook, name).get_hookimpls()
            self._callers[name] = [(i.plugin_name, self._only(name, i.plugin_name)) for i in reversed(impls)]
        return self._callers[name]

    def on_step_end(self, *, run: Run) -> None:
        self._call("adapt_on_step_end", run=run)

    def on_log(self, *, run: Run, logs: dict[str, float]) -> None:
        self._call("adapt_on_log", run=run, logs=logs)

    def on_evaluate(self, *, run: Run, metrics: dict[str, float]) -> None:
        self._call("adapt_on_evaluate", run=run, metrics=metrics)

    def save_artifacts(self, *, run: Run, directory: Path) -> None:
        self._call("adapt_save_artifacts", run=run, directory=directory)

    def load_artifacts(self, *, run: Run, directory: Path, plugin: str) -> None:
        self._call("adapt_load_artifacts", self._only("adapt_load_artifacts", plugin), run=run, directory=directory)

    def restore_state(self, *, run: Run, directory: Path) -> None:
        self._call("adapt_restore_state", run=run, directory=directory)

    def predict(self, *, run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._provided("adapt_predict", self._call("adapt_predict", run=run, rows=rows), "predictions")

    def prediction_tensor(self, *, run: Run, outputs: Any) -> torch.Tensor:
        return self._provided(
            "adapt_prediction_tensor",
            self._call("adapt_prediction_tensor", run=run, outputs=outputs),
            "the prediction tensor",
        )

    def export_model(self, *, run: Run, merge: bool, plugin: str) -> None:
        self._call("adapt_export_model", self._only("adapt_export_model", plugin), run=run, merge=merge)

    def summary(self, *, run: Run) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for contribution in reversed(self._call("adapt_summary", run=run)):
            merged.update(contribution)
        return merged

    def checkpoint_state(self, *, run: Run) -> dict[str, Any]:
        """Each plugin's own answer, by plugin name (None answers left out)."""
        states = {}
        for plugin, caller in self._per_plugin("adapt_checkpoint_state"):
            answers = self._call("adapt_checkpoint_state", caller, run=run)  # pluggy leaves out None answers
            if answers:
                states[plugin] = answers[0]
        return states

    def load_checkpoint_state(self, *, run: Run, states: dict[str, Any]) -> None:
        for plugin, caller in self._per_plugin("adapt_load_checkpoint_state"):
            if plugin in states:
                self._call("adapt_load_checkpoint_state", caller, run=run, state=states[plugin])

    def on_train_error(self, *, run: Run, error: BaseException) -> None:
        self._call("adapt_on_train_error", run=run, error=error)

    def on_train_end(self, *, run: Run, summary: dict[str, Any]) -> None:
        self._call("adapt_on_train_end", run=run, summary=summary)
