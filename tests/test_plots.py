"""The plots plugin: curves.png in every run directory, drawn from a history that survives a resume."""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG), path
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("dpi", [100, 50])
def test_every_run_draws_its_curves(train_tiny, dpi, monkeypatch):
    import json

    from matplotlib.figure import Figure

    drawn = []
    real_savefig = Figure.savefig

    def keep(figure, *args, **kwargs):
        drawn.append(figure)
        return real_savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    run, _, summary = train_tiny(train={"eval_every": 4}, plugins={"disable": [], "plots": {"dpi": dpi}})
    # panels: loss (train and eval), learning rate, eval accuracy, eval macro_f1: 3 columns, 2 rows
    assert png_size(run.output_dir / "curves.png") == (round(12.6 * dpi), round(6.4 * dpi))
    figure = drawn[-1]
    panels = {ax.get_title(): {line.get_label(): line.get_xydata().tolist() for line in ax.lines} for ax in figure.axes}
    assert list(panels) == ["loss", "learning rate", "eval accuracy", "eval macro_f1"]
    records = [json.loads(line) for line in (run.output_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(train) > 3 and len(evals) > 1
    assert panels["loss"]["train loss"] == [[r["step"], r["loss"]] for r in train]  # every logged point, in order
    assert panels["loss"]["eval loss"] == [[r["step"], r["loss"]] for r in evals]
    assert panels["learning rate"]["lr"] == [[r["step"], r["lr"]] for r in train]
    assert panels["eval accuracy"]["accuracy"] == [[r["step"], r["accuracy"]] for r in evals]
    assert evals[-1]["accuracy"] == summary["eval"]["accuracy"]


class Interrupt:
    def __init__(self, step: int):
        self.step = step

    def adapt_on_step_end(self, run):
        if run.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_curves_of_a_resumed_run_start_at_the_first_step(tiny_recipe, monkeypatch):
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.run.interrupts import Interrupted
    from adapt.train.orchestration import run_recipe
    from adapt_plots import Plots

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    recipe_file = tiny_recipe(train={"eval_every": 4}, plugins={"disable": []})
    catalogue = Catalogue.discover(extra={"interrupt": Interrupt(step=8)})
    recipe = load_recipe(recipe_file, catalogue.infos)
    with pytest.raises(Interrupted):
        run_recipe(recipe, catalogue)
    assert png_size(Path(recipe.output.dir) / "curves.png")  # drawn when the run stopped, too

    plots = Plots()
    catalogue = Catalogue.discover(extra={"plots": plots})
    run_recipe(load_recipe(recipe_file, catalogue.infos), catalogue, resume="latest")
    assert [r["step"] for r in plots.train] == list(range(2, 25, 2))  # logged before and after the resume
    assert [e["step"] for e in plots.evals] == [4, 8, 12, 16, 20, 24]
