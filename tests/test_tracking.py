"""The tracking plugin: what a run sends to TensorBoard, MLflow and W&B (offline), read back from disk."""

from __future__ import annotations

import json

import pytest


def test_logs_and_evals_reach_tensorboard_mlflow_and_wandb_offline(train_tiny, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    offline = {"wandb": {"mode": "offline"}}
    tracking = {"backends": ["tensorboard", "mlflow", "wandb"], "project": "toy", "init": offline}
    run, _, summary = train_tiny(train={"eval_every": 6}, plugins={"tracking": tracking})
    folder = run.output_dir / "tracking"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / run.output_dir.name)).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(2, 25, 2))  # log_every = 2, 24 steps
    evals = events.Scalars("eval/accuracy")
    assert [e.step for e in evals] == [6, 12, 18, 24] and evals[-1].value == pytest.approx(summary["eval"]["accuracy"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "toy"]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == run.output_dir.name and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["train.learning_rate"] == "0.01"  # the recipe, flattened
    history = client.get_metric_history(mlflow_run.info.run_id, "eval/accuracy")
    assert [m.step for m in history] == [6, 12, 18, 24] and history[-1].value == summary["eval"]["accuracy"]

    (offline,) = (folder / "wandb").glob("offline-run-*/run-*.wandb")
    evals = [(h["_step"], h["eval/accuracy"]) for h in wandb_history(offline) if "eval/accuracy" in h]
    assert evals == [(6, evals[0][1]), (12, evals[1][1]), (18, evals[2][1]), (24, summary["eval"]["accuracy"])]


def wandb_history(path) -> list[dict]:
    """The history rows of an offline W&B run file: a LevelDB-style log (32 KiB blocks of records with a
    7-byte header: crc, length, kind) of protobuf Records, after W&B's own 7-byte file header."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunks, pending = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # the block's padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a whole record, or the last piece of one
            chunks.append(pending)
    rows = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_a_backend_that_is_not_installed_is_named_before_the_run(tiny_recipe, monkeypatch, capsys):
    from adapt.commands.cli import main

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    recipe = tiny_recipe(plugins={"tracking": {"backends": ["tensorbord", "aim"], "init": {"wandb": {}}}})
    assert main(["run", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "plugins.tracking.backends: 'tensorbord' is not a tracker Accelerate knows" in err
    assert "'aim' is not installed (pip install aim)" in err and "init names wandb" in err


class Interrupt:
    def adapt_on_step_end(self, run):
        if run.step == 8:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_a_resumed_run_continues_its_mlflow_run(tiny_recipe, monkeypatch):
    from mlflow.tracking import MlflowClient

    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.run.interrupts import Interrupted
    from adapt.train.orchestration import run_recipe

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    path = tiny_recipe(train={"eval_every": 6}, plugins={"tracking": {"backends": ["mlflow"]}})
    catalogue = Catalogue.discover(extra={"interrupt": Interrupt()})
    recipe = load_recipe(path, catalogue.infos)
    with pytest.raises(Interrupted):
        run_recipe(recipe, catalogue)
    run_recipe(load_recipe(path, Catalogue.discover().infos), Catalogue.discover(), resume="latest")
    client = MlflowClient(tracking_uri=f"sqlite:///{recipe.output.dir}/tracking/mlflow.db")
    (mlflow_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = client.get_metric_history(mlflow_run.info.run_id, "eval/accuracy")
    assert [m.step for m in history] == [6, 12, 18, 24] and mlflow_run.info.status == "FINISHED"
