"""Hook plumbing: order of calls, error attribution, misspelled hooks, overrides by firstresult."""

from __future__ import annotations

import json

import pytest

from adapt import PluginError, PluginInfo, RecipeError, hookimpl
from adapt.commands.cli import main
from adapt.plugin.manager import HOOK_NAMES, Catalogue
from adapt.recipe.loader import load_recipe
from adapt.train.orchestration import run_recipe


class Recorder:
    """Implements every observer and contribution hook and records the order in which they fire."""

    def __init__(self):
        self.calls: list[str] = []

    @hookimpl
    def adapt_configure(self, recipe):
        self.calls.append("configure")

    @hookimpl
    def adapt_model_load_kwargs(self, run):
        self.calls.append("model_load_kwargs")

    @hookimpl
    def adapt_on_train_start(self, run):
        self.calls.append("train_start")

    @hookimpl
    def adapt_on_epoch_start(self, run, epoch):
        self.calls.append(f"epoch_start {epoch}")

    @hookimpl
    def adapt_loss_terms(self, run):
        if "loss_terms" not in self.calls:
            self.calls.append("loss_terms")

    @hookimpl
    def adapt_on_step_end(self, run):
        self.calls.append(f"step_end {run.step}")

    @hookimpl
    def adapt_on_log(self, run, logs):
        self.calls.append(f"log {logs['step']}")

    @hookimpl
    def adapt_on_evaluate(self, run, metrics):
        self.calls.append("evaluate")

    @hookimpl
    def adapt_save_artifacts(self, run, directory):
        self.calls.append("save_artifacts")

    @hookimpl
    def adapt_summary(self, run):
        self.calls.append("summary")
        return {"recorder_calls": len(self.calls)}

    @hookimpl
    def adapt_on_train_end(self, run, summary):
        self.calls.append("train_end")


def tiny_run(tiny_recipe, plugins: dict, overrides=(), **changes):
    catalogue = Catalogue.discover(extra=plugins)
    recipe = load_recipe(tiny_recipe(**changes), catalogue.infos, overrides)
    return run_recipe(recipe, catalogue), catalogue


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


def test_every_hook_fires_in_order(tiny_recipe):
    recorder = Recorder()
    summary, _ = tiny_run(tiny_recipe, {"recorder": recorder}, train={"epochs": 2, "log_every": 4, "eval_every": 6})
    # 192 rows / 16 = 12 steps per epoch, 24 steps in all.
    steps = [f"step_end {i}" for i in range(1, 25)]
    expected = ["configure", "model_load_kwargs", "train_start", "epoch_start 0", "loss_terms"]
    body = []
    for i, step in enumerate(steps, start=1):
        if i == 13:
            body.append("epoch_start 1")
        body.append(step)
        if i % 4 == 0:
            body.append(f"log {i}")
        if i % 6 == 0 and i < 24:
            body.append("evaluate")
    expected += body + ["evaluate", "save_artifacts", "summary", "train_end"]
    assert recorder.calls == expected
    assert summary["recorder_calls"] == len(expected) - 1  # contributed before train_end


def test_recipe_selects_plugins_and_disable_removes_them(tiny_recipe):
    catalogue = Catalogue.discover(extra={"recorder": Recorder()})
    recipe = load_recipe(tiny_recipe(plugins={"disable": ["progress", "recorder"]}), catalogue.infos)
    names = {name for name, _ in catalogue.manager(recipe).list_name_plugin()}
    infrastructure = {"metrics", "plots", "forgetting", "tracking"}
    assert names == {"adapt.defaults", *infrastructure, "sequence-classification", "lora"}


class Exploding:
    @hookimpl
    def adapt_on_step_end(self, run):
        if run.step == 2:
            {}["missing"]


def test_exception_in_a_hook_names_plugin_and_hook(tiny_recipe):
    with pytest.raises(PluginError) as info:
        tiny_run(tiny_recipe, {"exploding": Exploding()})
    assert info.value.plugin == "exploding"
    assert info.value.hook == "adapt_on_step_end"
    assert str(info.value) == "plugin 'exploding' failed in adapt_on_step_end: KeyError: 'missing'"


class _Mismatched:
    @hookimpl
    def adapt_on_train_start(self, run):
        import torch

        torch.nn.functional.linear(torch.zeros(2, 3), torch.zeros(4, 5))  # torch raises deep inside


def test_exception_deep_inside_a_library_is_attributed(tiny_recipe):
    with pytest.raises(PluginError) as info:
        tiny_run(tiny_recipe, {"mismatched": _Mismatched()})
    assert info.value.plugin == "mismatched"
    assert info.value.hook == "adapt_on_train_start"


def test_a_configuration_peft_refuses_is_a_recipe_problem_naming_the_method(tiny_recipe):
    # LoRA asks PEFT to adapt a layer type it cannot (a LayerNorm); a target the model lacks: tests/test_bad_input.py
    with pytest.raises(RecipeError) as info:
        tiny_run(tiny_recipe, {}, methods={"lora": {"target_modules": ["LayerNorm"]}})
    assert "methods.lora: PEFT cannot apply this configuration" in str(info.value) and "LayerNorm" in str(info.value)


def test_cli_prints_plugin_error_without_traceback(tiny_recipe, capsys, monkeypatch):
    import importlib.metadata as md

    real = md.entry_points
    fake = md.EntryPoint("exploding", f"{__name__}:Exploding", "adapt")
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "0")
    monkeypatch.setattr(
        md,
        "entry_points",
        lambda group: [*real(group="adapt"), fake] if group == "adapt" else real(group=group),
    )
    code = main(["run", str(tiny_recipe())])
    err = capsys.readouterr().err
    assert code == 1
    assert "plugin 'exploding' failed in adapt_on_step_end: KeyError: 'missing'" in err
    assert "Traceback" not in err


class Misspelled:
    @hookimpl
    def adapt_on_stepend(self, run):
        pass


class Unmarked:
    """No decorator: still a hook implementation (as in pytest), so it cannot silently do nothing."""

    def __init__(self):
        self.steps = 0

    def adapt_on_step_end(self, run):
        self.steps += 1


class BadSignature:
    @hookimpl
    def adapt_on_step_end(self, run, not_a_parameter):
        pass


def test_misspelled_hook_and_bad_signature_are_reported_with_the_plugin_name():
    catalogue = Catalogue.discover(extra={"misspelled": Misspelled(), "bad": BadSignature()})
    assert catalogue.broken["misspelled"] == "unknown hook 'adapt_on_stepend'; did you mean 'adapt_on_step_end'?"
    assert catalogue.broken["bad"] == (
        "adapt_on_step_end asks for 'not_a_parameter', which it is never passed (it passes: run)"
    )
    assert "misspelled" not in catalogue.entries


def test_broken_plugin_named_in_recipe_is_a_recipe_error(tiny_recipe):
    catalogue = Catalogue.discover(extra={"misspelled": Misspelled()})
    from adapt.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe(methods={"misspelled": {}}), catalogue.infos, broken=catalogue.broken)
    assert "methods.misspelled: plugin 'misspelled' is installed but failed to load: unknown hook" in str(info.value)


def test_unmarked_hook_functions_are_called(tiny_recipe):
    unmarked = Unmarked()
    summary, _ = tiny_run(tiny_recipe, {"unmarked": unmarked})
    assert unmarked.steps == summary["steps"] == 24


class PackingCollator:
    """A method plugin whose firstresult collator replaces the head's."""

    def __init__(self):
        self.batches = 0

    @hookimpl
    def adapt_plugin_info(self):
        return PluginInfo(kind="method")

    @hookimpl
    def adapt_transform_model(self, run):
        pass

    @hookimpl
    def adapt_make_collator(self, run):
        from transformers import DataCollatorWithPadding

        inner = DataCollatorWithPadding(run.tokenizer, pad_to_multiple_of=8)

        def collate(features):
            self.batches += 1
            return inner(features)

        return collate


def test_a_method_overrides_the_heads_collator(tiny_recipe):
    plugin = PackingCollator()
    tiny_run(tiny_recipe, {"packing": plugin}, methods={"packing": {}})
    assert plugin.batches > 24  # every train and eval batch went through it


def test_hookspecs_document_every_hook():
    from adapt import hookspecs

    for name in HOOK_NAMES:
        doc = getattr(hookspecs, name).__doc__
        assert doc and len(doc.split()) >= 8, name


def test_plugins_command_lists_builtins_and_their_hooks(capsys):
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p for p in listing["plugins"]}
    assert {"lora", "sequence-classification", "progress", "metrics"} <= set(by_name)
    assert by_name["lora"]["kind"] == "method"
    assert "adapt_transform_model" in by_name["lora"]["hooks"]
    assert by_name["sequence-classification"]["origin"] == "built-in"
    assert main(["plugins"]) == 0
    assert "sequence-classification" in capsys.readouterr().out
