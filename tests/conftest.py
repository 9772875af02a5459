"""Shared fixtures: a tiny BERT built from a config, a learnable toy dataset, and recipe writing."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

GOOD = ["good", "great", "fine", "superb", "lovely"]
BAD = ["bad", "awful", "poor", "dull", "boring"]
FILLER = [f"w{i}" for i in range(60)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def toy_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences of 2-24 words; label 1 when a positive word appears, 0 when a negative one does."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(FILLER, k=rng.randint(1, 23))
        words.insert(rng.randrange(len(words) + 1), rng.choice(GOOD if label else BAD))
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    return path


@pytest.fixture(scope="session")
def toy():
    """The toy vocabulary and sentence generator, for test modules (conftest is not importable by them)."""
    from types import SimpleNamespace

    return SimpleNamespace(good=GOOD, bad=BAD, filler=FILLER, rows=toy_rows)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level vocabulary, saved like a hub checkpoint."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = {word: i for i, word in enumerate(SPECIALS + GOOD + BAD + FILLER)}
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("toy-data")
    return {
        "train": write_tsv(folder / "train.tsv", toy_rows(192, seed=1)),
        "eval": write_tsv(folder / "dev.tsv", toy_rows(64, seed=2)),
    }


@pytest.fixture(scope="session")
def toy_ner(tmp_path_factory) -> dict[str, Path]:
    """The toy sentences as JSON lines of words and tags: B-POS / B-NEG on the sentiment word, O elsewhere."""
    import json

    folder = tmp_path_factory.mktemp("toy-ner")
    paths = {}
    for split, (n, seed) in {"train": (192, 1), "eval": (64, 2)}.items():
        lines = []
        for text, _ in toy_rows(n, seed):
            words = text.split()
            tags = ["B-POS" if w in GOOD else "B-NEG" if w in BAD else "O" for w in words]
            lines.append(json.dumps({"tokens": words, "ner_tags": tags}))
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("\n".join(lines) + "\n")
    return paths


def recipe_dict(model_dir: Path, data: dict[str, Path], output: Path) -> dict:
    return {
        "model": {"name": str(model_dir)},
        "data": {"train_file": str(data["train"]), "eval_file": str(data["eval"]), "max_length": 32},
        "task": {"head": "sequence-classification", "text_column": "sentence", "label_column": "label"},
        "methods": {"lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "learning_rate": 1e-2,
            "log_every": 2,
            "seed": 7,
            "warmup_ratio": 0.0,
            "precision": "fp32",  # the same arithmetic on every CPU kind ("auto" is bf16 on AMX CPUs)
        },
        "output": {"dir": str(output)},
        # curves.png costs about a second of matplotlib per run, more than a tiny run trains; the tests that
        # look at it enable the plugin again (plugins.disable = [])
        "plugins": {"disable": ["plots"]},
    }


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir, toy_data):
    """Write a recipe for the tiny model and return its path. `changes` are merged per table, except
    `methods` and a `task` naming another head, which replace the recipe's."""

    def write(name: str = "recipe.toml", **changes: dict) -> Path:
        recipe = recipe_dict(tiny_model_dir, toy_data, tmp_path / "run")
        for table, values in changes.items():
            if table == "methods" or (
                table == "task" and values.get("head", recipe["task"]["head"]) != recipe["task"]["head"]
            ):
                recipe[table] = values
            else:
                recipe.setdefault(table, {}).update(values)
        path = tmp_path / name
        path.write_text(tomli_w.dumps(recipe))
        return path

    return write


@pytest.fixture(scope="session")
def install_fixture(tmp_path_factory):
    """pip-install the package tests/fixtures/NAME into a folder of its own (the project's venv is left alone)
    and return that folder, for PYTHONPATH."""
    installed: dict[str, Path] = {}

    def install(name: str) -> Path:
        if name not in installed:
            target = tmp_path_factory.mktemp(f"site-{name}")
            source = Path(__file__).parent / "fixtures" / name
            pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
            subprocess.run([*pip, "--target", str(target), str(source)], check=True, capture_output=True)
            installed[name] = target
        return installed[name]

    return install


def run_adapt(*args: str, env: dict | None = None, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`adapt ARGS` in a fresh interpreter (HF_HUB_OFFLINE and PYTHONPATH count only at start-up), optionally
    under a launcher such as torchrun; built-in plugins only unless `env` says otherwise."""
    environ = {**os.environ, "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}
    command = [*launcher, "-m", "adapt.cli", *args] if launcher else [sys.executable, "-m", "adapt.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=600)


@pytest.fixture
def adapt_cli():
    return run_adapt


@pytest.fixture
def adapt_with_crash(install_fixture):
    """`adapt` in a subprocess with the adapt-crash fixture plugin installed: `--set plugins.crash.step=N`
    (or `micro_batch=N`, `signal="SIGTERM"`, `twice=true`) makes the process signal itself there."""
    site = install_fixture("adapt-crash")

    def run(*args: str, launcher: tuple[str, ...] = ()):
        env = {"PYTHONPATH": str(site), "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "0"}
        if launcher:  # torchrun: CPU processes over gloo, one thread each
            env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
        return run_adapt(*args, env=env, launcher=launcher)

    return run


class _Capture:
    """Keeps the run and a copy of its parameters as training starts."""

    def adapt_on_train_start(self, run):
        self.run = run
        self.before = {name: p.detach().clone() for name, p in run.unwrapped_model.named_parameters()}


@pytest.fixture
def train_tiny(tiny_recipe, monkeypatch):
    """`adapt run` on the tiny model through the library; returns (run, parameters before training, summary)."""
    from adapt.manager import Catalogue
    from adapt.recipe import load_recipe
    from adapt.trainer import run_recipe

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")

    def train(overrides=(), **changes):
        capture = _Capture()
        catalogue = Catalogue.discover(extra={"capture": capture})
        summary = run_recipe(load_recipe(tiny_recipe(**changes), catalogue.infos, overrides), catalogue)
        return capture.run, capture.before, summary

    return train


@pytest.fixture
def restore_tiny(tiny_recipe):
    """A fresh run of the same recipe with its model restored from the run directory's artifacts."""
    from adapt.build import restore_model, start_run
    from adapt.manager import Catalogue
    from adapt.recipe import load_recipe

    def restore(run_dir: Path, **changes):
        catalogue = Catalogue.discover()
        recipe = load_recipe(tiny_recipe(**changes), catalogue.infos, ["output.overwrite=true"])
        run, hooks = start_run(recipe, catalogue)
        restore_model(run, hooks, run_dir)
        return run

    return restore


@pytest.fixture
def sample_batch():
    """Four padded toy sentences, as model inputs (no labels)."""

    def make(tokenizer) -> dict:
        texts = ["w1 good w2", "w3 w4 awful", "lovely", "w5 w6 w7 dull w8 w9"]
        return dict(tokenizer(texts, padding=True, return_tensors="pt"))

    return make


@pytest.fixture
def same_gradients_with_checkpointing(tiny_recipe, monkeypatch):
    """Assert that one training batch (dropout on, same seed) gives the same gradients with activation
    checkpointing as without, for a recipe of the tiny model with `changes`, and that blocks are checkpointed."""
    import torch

    from adapt.build import build_model, start_run
    from adapt.manager import Catalogue
    from adapt.recipe import load_recipe

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")

    def gradients(checkpointing: bool, changes: dict):
        catalogue = Catalogue.discover()
        train = {**changes.pop("train", {}), "gradient_checkpointing": checkpointing}
        recipe = load_recipe(tiny_recipe(train=train, **changes), catalogue.infos)
        run, hooks = start_run(recipe, catalogue)
        build_model(run, hooks)
        encoded = hooks.encode(run=run, dataset=run.dataset).with_format(None)
        batch = hooks.make_collator(run=run)([encoded["train"][i] for i in range(16)])
        model = run.model.train()
        torch.manual_seed(0)
        model(**batch).loss.backward()
        checkpointed = sum(1 for m in model.modules() if getattr(m, "gradient_checkpointing", False))
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, checkpointed

    def check(**changes):
        plain, none = gradients(False, dict(changes))
        recomputed, checkpointed = gradients(True, dict(changes))
        assert none == 0 and checkpointed >= 2  # both blocks recompute
        assert plain.keys() == recomputed.keys() and plain
        for name, grad in plain.items():
            torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-6, msg=name)

    return check
