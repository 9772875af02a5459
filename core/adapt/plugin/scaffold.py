"""`adapt new-plugin NAME --kind method|head|infrastructure`: a plugin package that installs and passes its own tests.

Each kind starts from something small that works, so the author changes code that runs rather than filling blanks:
a method that trains the biases and the head (BitFit) with save/restore, a head for integer class labels, and an
infrastructure plugin that keeps the best evaluation in summary.json. The tests use adapt.testing's fixtures.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path
from string import Template

from adapt.errors import UsageError
from adapt.hookspecs import HOOK_API

KINDS = ("method", "head", "infrastructure")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$summary"
requires-python = ">=3.11"
dependencies = ["adapt-peft>=$adapt_version"]

[project.optional-dependencies]
test = ["pytest>=8"]

# adapt finds the plugin through this entry point; recipes name it "$name".
[project.entry-points.adapt]
$name = "$module:$cls"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
addopts = "--import-mode=importlib"
testpaths = ["tests"]
"""

README = """\
# $dist

$summary. An adapt $kind plugin, named `$name` in recipes.

```bash
pip install -e ".[test]"
pytest                      # trains adapt.testing's tiny model with the plugin
adapt plugins $name         # its options
```

The hooks, their order and the `Run` object: docs/plugins.md in adapt's repository.
"""

METHOD = '''\
"""$dist: $summary.

A method changes the model in adapt_transform_model, saves what it trained in adapt_save_artifacts and puts it back
in adapt_load_artifacts, so that `adapt eval`, `predict` and `export` work on the finished run.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from adapt import AdaptError, PluginInfo, Run, Table, hookimpl, load_tensors_into, save_tensors

NAME = "$name"
FILE = "$module.safetensors"


class ${cls}Table(Table):
    """[methods.$name]"""

    train_layer_norms: bool = Field(default=False, description="train the LayerNorm weights as well as the biases")


class $cls:
    """A class entry point: adapt makes one instance per run."""

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="method", table=${cls}Table, summary="$summary", requires_api="$hook_api")

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        table = run.table(${cls}Table)
        head = run.head_parameters()  # the new head trains with every method
        for name, param in run.model.named_parameters():
            norm = table.train_layer_norms and "layernorm" in name.lower()
            param.requires_grad_(name in head or name.endswith(".bias") or norm)

    @hookimpl
    def adapt_save_artifacts(self, run: Run, directory: Path) -> None:
        trained = {name: p for name, p in run.unwrapped_model.named_parameters() if p.requires_grad}
        save_tensors(trained, directory / NAME / FILE)  # written to a temporary file, then renamed

    @hookimpl
    def adapt_load_artifacts(self, run: Run, directory: Path) -> None:
        path = directory / NAME / FILE
        if not path.is_file():
            raise AdaptError(f"{path}: missing; method '{NAME}' writes it when its run finishes")
        load_tensors_into(run.model, path)
'''

METHOD_TEST = '''\
"""The installed method, named in a recipe, on adapt.testing's tiny BERT and toy data."""

from __future__ import annotations

import json

import torch

from adapt import hookimpl


class Snapshot:
    """Copies the weights as loaded, before any method."""

    @hookimpl
    def adapt_on_model_loaded(self, run):
        self.before = {name: p.detach().clone() for name, p in run.model.named_parameters()}


def test_only_the_biases_and_the_head_change(run_recipe, tiny_recipe):
    snapshot = Snapshot()
    trained = run_recipe(tiny_recipe(methods={"$name": {}}), plugins={"snapshot": snapshot})
    head = trained.run.head_parameters()
    changed = set()
    for name, param in trained.run.unwrapped_model.named_parameters():
        if not torch.equal(param.detach(), snapshot.before[name]):
            changed.add(name)
    assert changed and all(name in head or name.endswith(".bias") for name in changed)
    assert set(head) <= changed


def test_eval_reloads_what_the_run_trained(run_recipe, tiny_recipe, capsys):
    from adapt.commands.cli import main

    trained = run_recipe(tiny_recipe(methods={"$name": {}}))
    capsys.readouterr()
    assert main(["eval", str(trained.output_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == trained.summary["eval"]["accuracy"]
'''

HEAD = '''\
"""$dist: $summary.

A head subclasses adapt.Head, which implements the head's hooks (model loading, the collator, save/restore, predict).
The subclass declares its table, the names of the model's outputs, how rows become features, its metrics and how one
prediction looks.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adapt import Head, Run, TextInputs, encode_splits, require_columns, tokenize_texts


class ${cls}Table(TextInputs):
    """[task] with head = "$name": text_column (and text_pair_column) come from TextInputs."""

    label_column: str = Field(default="label", description="the column of integer class ids 0 .. num_labels - 1")
    num_labels: int = Field(default=2, ge=2, description="how many classes")


class Accuracy:
    """adapt.Metrics: each process updates with its share of the batches; the core merges them."""

    def __init__(self) -> None:
        self.correct = self.total = 0

    def update(self, outputs: Any, batch: Any) -> None:
        predicted = outputs.logits.argmax(-1)
        self.correct += int((predicted == batch["labels"]).sum())
        self.total += len(predicted)

    def merge(self, other: Accuracy) -> None:
        self.correct += other.correct
        self.total += other.total

    def compute(self) -> dict[str, float]:
        return {"accuracy": self.correct / max(self.total, 1)}


def encode_batch(examples: dict[str, list], *, tokenizer, text, pair, label, max_length) -> dict[str, Any]:
    features = tokenize_texts(examples, tokenizer=tokenizer, text=text, pair=pair, max_length=max_length)
    features["labels"] = [int(value) for value in examples[label]]
    return features


class $cls(Head):
    """A class entry point: one instance per run keeps that run's class names (saved to labels.json)."""

    table = ${cls}Table
    summary = "$summary"
    requires_api = "$hook_api"
    auto_class = "AutoModelForSequenceClassification"  # any transformers Auto class with a fresh output layer
    task_type = "SEQ_CLS"  # PEFT's name for the task

    def resolve_names(self, run: Run) -> list[str]:
        return [str(i) for i in range(run.table(${cls}Table).num_labels)]

    def encode(self, run: Run, dataset) -> Any:
        table = run.table(${cls}Table)
        require_columns(dataset, {**table.input_columns(), "label_column": table.label_column})
        return encode_splits(
            dataset,
            encode_batch,
            tokenizer=run.tokenizer,
            text=table.text_column,
            pair=table.text_pair_column,
            label=table.label_column,
            max_length=run.recipe.data.max_length,
        )

    def make_metrics(self, run: Run) -> Accuracy:
        return Accuracy()

    def format(self, run: Run, given: Any, logits: Any, features: dict[str, Any]) -> dict[str, Any]:
        probs = logits.softmax(-1)
        return {"text": given, "label": int(probs.argmax()), "score": float(probs.max())}
'''

HEAD_TEST = '''\
"""The installed head, named in a recipe, learns adapt.testing's toy sentiment set and predicts with it."""

from __future__ import annotations

import json


def test_the_head_learns_the_toy_set_and_predicts(run_recipe, tiny_recipe, capsys):
    from adapt.commands.cli import main

    task = {"head": "$name", "text_column": "sentence", "label_column": "label"}
    trained = run_recipe(tiny_recipe(task=task, methods={"full": {}}, train={"epochs": 10, "learning_rate": 3e-3}))
    assert trained.summary["eval"]["accuracy"] >= 0.9
    capsys.readouterr()
    assert main(["predict", str(trained.output_dir), "--json", "w1 w2 lovely w3", "w4 awful w5"]) == 0
    positive, negative = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (positive["label"], negative["label"]) == (1, 0)
'''

INFRASTRUCTURE = '''\
"""$dist: $summary.

An infrastructure plugin is on in every run once installed (a recipe turns it off with plugins.disable). It
observes: the hooks it implements return None, except adapt_summary, whose dict goes into summary.json.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from adapt import PluginInfo, Run, Table, hookimpl

NAME = "$name"


class ${cls}Table(Table):
    """[plugins.$name]"""

    metric: str = Field(default="accuracy", description="the evaluation metric to follow")
    mode: Literal["max", "min"] = Field(default="max", description="whether larger or smaller is better")


class $cls:
    """A class entry point: one instance per run holds that run's best."""

    def __init__(self) -> None:
        self.best: dict[str, Any] | None = None

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="infrastructure", table=${cls}Table, summary="$summary", requires_api="$hook_api")

    @hookimpl
    def adapt_on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        table = run.table(${cls}Table)
        if table.metric not in metrics:
            return
        value = metrics[table.metric]
        if self.best is None or (value > self.best["value"] if table.mode == "max" else value < self.best["value"]):
            self.best = {"metric": table.metric, "value": value, "step": run.step}

    # Kept in checkpoints, so that a resumed run remembers the best of the steps before it.
    @hookimpl
    def adapt_checkpoint_state(self) -> dict[str, Any] | None:
        return {"best": self.best} if self.best else None

    @hookimpl
    def adapt_load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.best = state["best"]

    @hookimpl
    def adapt_summary(self) -> dict[str, Any] | None:
        return {NAME: self.best} if self.best else None
'''

INFRASTRUCTURE_TEST = '''\
"""The installed plugin, on in every run, on adapt.testing's tiny BERT and toy data."""

from __future__ import annotations


def test_the_summary_holds_the_best_evaluation(run_recipe, tiny_recipe):
    trained = run_recipe(tiny_recipe(train={"epochs": 3, "eval_every": 4}))
    evals = [record for record in trained.logs if record["kind"] == "eval"]
    best = max(evals, key=lambda record: record["accuracy"])
    assert trained.summary["$name"] == {"metric": "accuracy", "value": best["accuracy"], "step": best["step"]}


def test_loss_can_be_followed_downwards(run_recipe, tiny_recipe):
    trained = run_recipe(tiny_recipe(plugins={"$name": {"metric": "loss", "mode": "min"}}))
    evals = [record for record in trained.logs if record["kind"] == "eval"]
    assert trained.summary["$name"]["value"] == min(record["loss"] for record in evals)
'''

SUMMARIES = {
    "method": "trains only the biases and the head (BitFit)",
    "head": "text classification with integer class labels",
    "infrastructure": "records the best evaluation in summary.json",
}
SOURCES = {
    "method": (METHOD, METHOD_TEST),
    "head": (HEAD, HEAD_TEST),
    "infrastructure": (INFRASTRUCTURE, INFRASTRUCTURE_TEST),
}


def new_plugin(name: str, kind: str, parent: Path) -> Path:
    """Write the package `adapt-NAME` under `parent` and return its folder."""
    problems = []
    if not NAME_PATTERN.match(name):
        problems.append(f"NAME '{name}': use lower-case letters, digits and single hyphens, starting with a letter")
    if kind not in KINDS:
        problems.append(f"--kind '{kind}': choose one of {', '.join(KINDS)}")
    if name in _installed_plugin_names():
        problems.append(f"NAME '{name}': an installed plugin already has this name (see `adapt plugins`)")
    dist = name if name.startswith("adapt-") else f"adapt-{name}"
    folder = parent / dist
    if folder.exists():
        problems.append(f"{folder}: already exists; nothing was written")
    if problems:
        raise UsageError("cannot create the plugin:\n  " + "\n  ".join(problems))
    module = dist.replace("-", "_")
    fields = {
        "name": name,
        "dist": dist,
        "module": module,
        "cls": "".join(part.capitalize() for part in name.split("-")),
        "kind": kind,
        "summary": SUMMARIES[kind],
        "adapt_version": _adapt_version(),
        "hook_api": HOOK_API,
    }
    source, test = SOURCES[kind]
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{module}/__init__.py": source,
        f"tests/test_{module}.py": test,
    }
    staging = parent / f".{dist}.tmp"  # everything or nothing: written aside, then renamed into place
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for relative, template in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(template).substitute(fields))
        staging.rename(folder)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        why = exc.strerror or type(exc).__name__
        raise UsageError(f"--dir {parent}: cannot write the package there ({why}); nothing was written") from None
    return folder


def _installed_plugin_names() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group="adapt")}


def _adapt_version() -> str:
    from adapt.plugin.manager import BUILTIN_DISTRIBUTION

    try:
        return importlib.metadata.version(BUILTIN_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0.1"
