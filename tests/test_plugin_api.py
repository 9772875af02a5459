"""What a plugin author relies on: `adapt_on_model_loaded` before any method, parameter origins that survive
wrapping, the total loss logged beside the task loss, and adapt.testing's `run_recipe`."""

from __future__ import annotations

import pytest

from adapt import hookimpl


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


class Watcher:
    """Records what the model looked like when loaded, and the origins once every method is applied."""

    def __init__(self):
        self.events = []

    @hookimpl
    def adapt_on_model_loaded(self, run):
        self.events.append("loaded")
        self.loaded_names = [n for n, _ in run.model.named_parameters()]
        self.all_trainable = all(p.requires_grad for p in run.model.parameters())
        self.pretrained_at_load = set(run.pretrained_parameters())

    @hookimpl
    def adapt_transform_model(self, run):  # not a method, so never called: methods are called one at a time
        self.events.append("transform")

    @hookimpl
    def adapt_on_train_start(self, run):
        self.events.append("train_start")
        model = run.unwrapped_model
        self.origins = {n: run.parameter_origin(n, p) for n, p in model.named_parameters()}
        self.head = set(run.head_parameters())
        self.pretrained = set(run.pretrained_parameters())


def test_model_loaded_fires_before_methods_with_every_parameter_trainable(run_recipe, tiny_recipe):
    watcher = Watcher()
    run_recipe(tiny_recipe(train={"epochs": 1}), plugins={"watcher": watcher})
    assert watcher.events == ["loaded", "train_start"]
    assert watcher.all_trainable  # the core freezes nothing; LoRA froze the base afterwards
    assert "bert.encoder.layer.0.attention.self.query.weight" in watcher.loaded_names
    assert not any("lora" in n for n in watcher.loaded_names)
    assert not any(n.startswith("classifier") for n in watcher.pretrained_at_load)


def test_parameter_origins_survive_lora_wrapping_the_model_and_copying_its_head(run_recipe, tiny_recipe):
    watcher = Watcher()
    run_recipe(tiny_recipe(train={"epochs": 1}), plugins={"watcher": watcher})
    origins = watcher.origins
    query = "base_model.model.bert.encoder.layer.0.attention.self.query"
    assert origins[f"{query}.base_layer.weight"] == "pretrained"  # renamed by PEFT, the same tensor
    assert origins[f"{query}.lora_A.default.weight"] == "method"
    assert origins["base_model.model.classifier.modules_to_save.default.weight"] == "head"  # PEFT's trained copy
    assert origins["base_model.model.classifier.original_module.weight"] == "head"
    assert set(origins.values()) == {"pretrained", "method", "head"}
    assert watcher.head == {n for n, o in origins.items() if o == "head"}
    assert len(watcher.pretrained) == len(watcher.pretrained_at_load)  # every loaded weight found again


def test_parameter_origins_of_adapters_and_full_fine_tuning(run_recipe, tiny_recipe):
    watcher = Watcher()
    run_recipe(tiny_recipe(methods={"adapters": {}}, train={"epochs": 1}), plugins={"watcher": watcher})
    added = {n for n, o in watcher.origins.items() if o == "method"}
    assert added and all(".adapter." in n for n in added)
    assert watcher.head == {"classifier.weight", "classifier.bias"}

    watcher = Watcher()
    run_recipe(
        tiny_recipe(methods={"full": {}}, train={"epochs": 1}, output={"overwrite": True}), plugins={"watcher": watcher}
    )
    assert "method" not in watcher.origins.values()
    assert watcher.pretrained == watcher.pretrained_at_load


def test_origins_are_refused_before_the_model_is_loaded(run_recipe, tiny_recipe):
    class TooEarly:
        @hookimpl
        def adapt_configure(self, recipe):
            pass

        @hookimpl
        def adapt_model_load_kwargs(self, run):
            self.error = None
            try:
                run.head_parameters()
            except RuntimeError as exc:
                self.error = str(exc)

    early = TooEarly()
    run_recipe(tiny_recipe(train={"max_steps": 1}), plugins={"early": early})
    assert "once the model is loaded" in early.error


class Penalty:
    """A loss term of a known size, so the logged total can be checked."""

    @hookimpl
    def adapt_loss_terms(self, outputs):
        return {"penalty": outputs.logits.sum() * 0 + 0.25}


def test_total_loss_is_logged_beside_the_task_loss_when_terms_exist(run_recipe, tiny_recipe):
    trained = run_recipe(tiny_recipe(train={"epochs": 1}), plugins={"penalty": Penalty()})
    logs = trained.train_logs()
    assert logs and all(r["total_loss"] == pytest.approx(r["loss"] + 0.25) for r in logs)
    assert all(r["penalty"] == pytest.approx(0.25) for r in logs)

    plain = run_recipe(tiny_recipe(train={"epochs": 1}, output={"overwrite": True}))
    assert plain.train_logs() and not any("total_loss" in r for r in plain.train_logs())


def test_run_recipe_takes_a_dict_and_returns_the_trained_run(run_recipe, tiny_recipe):
    trained = run_recipe(tiny_recipe.dict(train={"max_steps": 3}))
    assert trained.run.step == 3 and trained.summary["steps"] == 3
    assert (trained.output_dir / "summary.json").is_file()
    assert [r["kind"] for r in trained.logs].count("eval") == 1


def test_a_note_from_a_plugin_reaches_stderr_while_the_progress_bar_is_live(run_recipe, tiny_recipe, capfd):
    class Noting:
        @hookimpl
        def adapt_on_evaluate(self, run, metrics):
            run.note(f"step {run.step}: accuracy {metrics['accuracy']:.2f}")

    run_recipe(tiny_recipe(train={"epochs": 1}), plugins={"noting": Noting()})
    err = capfd.readouterr().err
    assert "note: step 12: accuracy" in err
