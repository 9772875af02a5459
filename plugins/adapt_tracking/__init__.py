"""Tracking: the run's recipe, training logs and evaluations sent to the experiment trackers people use,
through Accelerate's tracker classes (TensorBoard, MLflow, Weights & Biases, trackio, and the others
Accelerate knows).

    [plugins.tracking]
    backends = ["tensorboard", "mlflow"]
    project = "sst2"                       # W&B / trackio project, MLflow experiment
    init = { wandb = { mode = "offline" } }  # keyword arguments for each backend's init

Nothing is sent until `backends` names one. Local backends write under `logging_dir` (default
RUN_DIR/tracking): TensorBoard event files in `tracking/RUN_NAME`, an MLflow store in `tracking/mlflow.db`
(unless MLFLOW_TRACKING_URI says where; `mlflow ui --backend-store-uri sqlite:///RUN_DIR/tracking/mlflow.db`
shows it), W&B's files in `tracking/wandb`. A resumed run continues the same MLflow / W&B run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

from adapt import AdaptError, PluginInfo, Run, Table, hookimpl

# Accelerate's name for each backend, and the package that provides it.
PACKAGES = {
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "wandb": "wandb",
    "trackio": "trackio",
    "aim": "aim",
    "comet_ml": "comet_ml",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
}


# Where the user points MLflow, read once: mlflow.set_tracking_uri also sets this variable, so reading it at each
# run would send the next run of the same process (a sweep's trial) to the previous run's store.
USER_MLFLOW_URI = os.environ.get("MLFLOW_TRACKING_URI")


class TrackingTable(Table):
    backends: list[str] = Field(default_factory=list)
    """Trackers to send to: tensorboard, mlflow, wandb, trackio, aim, comet_ml, clearml, dvclive, swanlab."""
    project: str = "adapt"
    """The W&B / trackio project and the MLflow experiment."""
    run_name: str | None = None
    """The run's name in the trackers (default: the output folder's name)."""
    logging_dir: str | None = None
    """Where local backends write (default: RUN_DIR/tracking)."""
    init: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Keyword arguments for each backend's init, e.g. { wandb = { mode = "offline", entity = "me" } }."""


def _available(name: str) -> bool:
    import accelerate.utils as utils

    check = getattr(utils, f"is_{name}_available", None)
    return bool(check()) if check is not None else False


class Tracking:
    def __init__(self) -> None:
        self.trackers: dict[str, Any] = {}
        self.resumed: dict[str, Any] = {}

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="infrastructure",
            table=TrackingTable,
            summary="sends the recipe, logs and evals to TensorBoard, MLflow, W&B, trackio (Accelerate's trackers)",
        )

    @hookimpl
    def adapt_configure(self, recipe) -> None:
        table = recipe.table(TrackingTable)
        problems = []
        for name in table.backends:
            if name not in PACKAGES:
                problems.append(f"'{name}' is not a tracker Accelerate knows (known: {', '.join(PACKAGES)})")
            elif not _available(name):
                problems.append(f"'{name}' is not installed (pip install {PACKAGES[name]})")
        unused = sorted(set(table.init) - set(table.backends))
        if unused:
            problems.append(f"init names {', '.join(unused)}, which backends does not list")
        if problems:
            raise AdaptError("plugins.tracking.backends: " + "; ".join(problems))

    @hookimpl
    def adapt_on_train_start(self, run: Run) -> None:
        table = run.table(TrackingTable)
        if not table.backends or not run.is_main_process:
            return
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        folder = Path(table.logging_dir) if table.logging_dir else run.output_dir / "tracking"
        folder.mkdir(parents=True, exist_ok=True)
        name = table.run_name or run.output_dir.absolute().name
        for backend in table.backends:
            options = dict(table.init.get(backend, {}))
            if backend == "tensorboard":
                tracker = LOGGER_TYPE_TO_CLASS[backend](name, folder, **options)
            elif backend == "mlflow":
                import mlflow

                if USER_MLFLOW_URI is None:  # MLflow 3 keeps a local store in SQLite
                    mlflow.set_tracking_uri(f"sqlite:///{(folder / 'mlflow.db').absolute()}")
                options.setdefault("run_id", self.resumed.get("mlflow"))
                tracker = LOGGER_TYPE_TO_CLASS[backend](experiment_name=table.project, run_name=name, **options)
            elif backend in ("wandb", "trackio"):
                if backend == "wandb":
                    options.setdefault("dir", str(folder))
                    if "wandb" in self.resumed:
                        options.setdefault("id", self.resumed["wandb"])
                        options.setdefault("resume", "allow")
                tracker = LOGGER_TYPE_TO_CLASS[backend](table.project, name=name, **options)
            else:
                tracker = LOGGER_TYPE_TO_CLASS[backend](name, **options)
            tracker.start()
            if run.resumed_from is None:
                tracker.store_init_configuration(_flat(run.recipe.to_dict()))
            self.trackers[backend] = tracker

    @hookimpl
    def adapt_on_log(self, logs: dict[str, float]) -> None:
        step = int(logs["step"])
        self._log({f"train/{k}": v for k, v in logs.items() if k != "step"}, step)

    @hookimpl
    def adapt_on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self._log({f"eval/{k}": v for k, v in metrics.items()}, run.step)

    def _log(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers.values():
            tracker.log(values, step=step)

    @hookimpl
    def adapt_checkpoint_state(self) -> dict[str, Any] | None:
        ids = {}
        if "mlflow" in self.trackers:
            ids["mlflow"] = self.trackers["mlflow"].active_run.info.run_id
        if "wandb" in self.trackers:
            ids["wandb"] = self.trackers["wandb"].run.id
        return ids or None

    @hookimpl
    def adapt_load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.resumed = dict(state)

    @hookimpl
    def adapt_on_train_end(self) -> None:
        self._finish()

    @hookimpl
    def adapt_on_train_error(self) -> None:
        self._finish()

    def _finish(self) -> None:
        for tracker in self.trackers.values():
            tracker.finish()
        self.trackers = {}


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The recipe as one level of `section.key` values (trackers take numbers, strings and booleans)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
