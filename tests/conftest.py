"""Fixtures of the project's own tests. The tiny models, toy data sets, `tiny_recipe` and `run_recipe` come from
adapt.testing, the pytest plugin that adapt installs for every plugin author."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    """Under pytest-xdist (`-n`, on by default): the cores shared out between the workers, so that torch's thread
    pools, this process's and those of the `adapt` subprocesses a test starts, do not fight over them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


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


@pytest.fixture
def passes_own_tests(tmp_path):
    """pip-install plugin packages from their folders into one site of their own (from copies: a build leaves nothing
    in the source) and run their tests in one fresh interpreter that sees them; returns {test file: passed}."""

    def check(*packages: Path) -> dict[str, int]:
        site = tmp_path / "site"
        copies = [Path(shutil.copytree(package, tmp_path / "copies" / package.name)) for package in packages]
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target"]
        subprocess.run([*pip, str(site), *map(str, copies)], check=True, capture_output=True)
        env = {**os.environ, "PYTHONPATH": str(site), "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "0"}
        command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--import-mode=importlib"]
        command += [str(c / "tests") for c in copies]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        passed: dict[str, int] = {}
        for line in result.stdout.splitlines():
            if " PASSED" in line:
                test_file = Path(line.split("::")[0]).name
                passed[test_file] = passed.get(test_file, 0) + 1
        return passed

    return check


def run_adapt(*args: str, env: dict | None = None, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`adapt ARGS` in a fresh interpreter (HF_HUB_OFFLINE and PYTHONPATH count only at start-up), optionally
    under a launcher such as torchrun; built-in plugins only unless `env` says otherwise."""
    environ = {**os.environ, "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}
    command = [*launcher, "-m", "adapt", *args] if launcher else [sys.executable, "-m", "adapt", *args]
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
    """Keeps a copy of the parameters as training starts."""

    def adapt_on_train_start(self, run):
        self.before = {name: p.detach().clone() for name, p in run.unwrapped_model.named_parameters()}


@pytest.fixture
def train_tiny(tiny_recipe, run_recipe, monkeypatch):
    """adapt.testing's `run_recipe` on the tiny recipe with `changes`; returns (run, parameters before training,
    summary)."""
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")

    def train(overrides=(), **changes):
        capture = _Capture()
        trained = run_recipe(tiny_recipe(**changes), plugins={"capture": capture}, overrides=overrides)
        return trained.run, capture.before, trained.summary

    return train


@pytest.fixture
def restore_tiny(tiny_recipe):
    """A fresh run of the same recipe with its model restored from the run directory's artifacts."""
    from adapt.model.build import restore_model, start_run
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe

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

    from adapt.model.build import build_model, start_run
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe

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


@pytest.fixture
def live_tensors():
    """`live_tensors(outside)`: a dispatch mode that tracks the bytes of the tensors made inside it that are still
    alive (`.total`; `.peak`: the most at once). Each storage counts once; views of the tensors
    in `outside` (weights, the batch), such as a weight's transpose, are not new memory."""
    import gc
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveTensors(TorchDispatchMode):
        def __init__(self, outside):
            super().__init__()
            self.outside = {t.untyped_storage()._cdata for t in outside}
            self.alive: dict[int, tuple[int, object]] = {}  # storage address -> (bytes, its registration)
            self.peak = 0

        def __enter__(self):
            # No garbage collection inside: it would free cycle-held tensors at a moment that depends on what earlier
            # tests allocated, and a late finaliser must not drop a new storage that reused the address (the token).
            self.gc_was_enabled = gc.isenabled()
            gc.disable()
            return super().__enter__()

        def __exit__(self, *exc):
            if self.gc_was_enabled:
                gc.enable()
            return super().__exit__(*exc)

        def _release(self, key, token) -> None:
            if self.alive.get(key, (0, None))[1] is token:
                del self.alive[key]

        @property
        def total(self) -> int:
            return sum(size for size, _ in self.alive.values())

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in torch.utils._pytree.tree_leaves(out):
                key = t.untyped_storage()._cdata if isinstance(t, torch.Tensor) else None
                if key is not None and key not in self.outside and key not in self.alive:
                    token = object()
                    self.alive[key] = (t.untyped_storage().nbytes(), token)
                    weakref.finalize(t.untyped_storage(), self._release, key, token)
            self.peak = max(self.peak, self.total)
            return out

    return LiveTensors
