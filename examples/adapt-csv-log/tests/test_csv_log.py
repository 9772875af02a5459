"""The installed plugin, found through its entry point, on adapt.testing's tiny model and toy data."""

from __future__ import annotations

import csv

import pytest


def read(path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file, delimiter=";"))


def test_every_log_and_evaluation_is_a_row(run_recipe, tiny_recipe):
    trained = run_recipe(tiny_recipe(plugins={"csv-log": {"delimiter": ";"}}, train={"eval_every": 6}))
    rows = read(trained.output_dir / "metrics.csv")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [float(r["loss"]) for r in train] == pytest.approx([r["loss"] for r in trained.train_logs()])
    assert [int(r["step"]) for r in evals] == [6, 12, 18, 24]  # 12 steps an epoch, 2 epochs
    assert float(evals[-1]["accuracy"]) == pytest.approx(trained.summary["eval"]["accuracy"])
    assert train[0]["accuracy"] == "" and evals[0]["lr"] == ""  # one header for both kinds of row


def test_a_file_name_with_a_folder_is_refused_before_training(run_recipe, tiny_recipe):
    from adapt import RecipeError

    with pytest.raises(RecipeError, match="plugins.csv-log.file"):
        run_recipe(tiny_recipe(plugins={"csv-log": {"file": "../elsewhere.csv"}}))
