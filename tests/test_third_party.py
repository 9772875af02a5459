"""A third-party package, really pip-installed, is discovered through its entry point and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def site(install_fixture) -> Path:
    """adapt-hello installed with pip into a folder of its own."""
    return install_fixture("adapt-hello")


@pytest.fixture
def adapt(site: Path, adapt_cli):
    """`adapt` with the fixture package importable and third-party autoload on."""
    return lambda *args, **env: adapt_cli(
        *args, env={"PYTHONPATH": str(site), "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "0", **env}
    )


def test_installed_plugin_is_listed_with_its_distribution(adapt):
    result = adapt("plugins", "--json")
    assert result.returncode == 0, result.stderr
    hello = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}["hello"]
    assert hello["origin"] == "third-party"
    assert (hello["distribution"], hello["version"]) == ("adapt-hello", "1.2.3")
    assert hello["hooks"] == ["adapt_on_train_end", "adapt_plugin_info"]


def test_autoload_can_be_turned_off(adapt):
    result = adapt("plugins", "--json", ADAPT_DISABLE_PLUGIN_AUTOLOAD="1")
    names = {p["name"] for p in json.loads(result.stdout)["plugins"]}
    assert "hello" not in names and "lora" in names


def test_installed_plugin_runs_with_its_recipe_table(adapt, tiny_recipe, tmp_path):
    recipe = tiny_recipe(plugins={"hello": {"greeting": "bonjour"}}, train={"epochs": 1})
    result = adapt("run", str(recipe))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "hello.json").read_text())
    assert record == {"greeting": "bonjour", "steps": 12, "methods": ["lora"]}
