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


def test_a_plugin_asks_for_its_table_by_class_and_gets_it_typed(run_recipe, tiny_recipe):
    from adapt_lora import LoraTable
    from adapt_progress import ProgressTable

    class Asks:
        @hookimpl
        def adapt_on_train_start(self, run):
            self.lora = run.table(LoraTable)
            self.same = run.table("lora")
            self.progress = run.table(ProgressTable)
            try:
                run.table(type("Unused", (LoraTable,), {}))
            except KeyError as exc:
                self.error = str(exc)

    asks = Asks()
    run_recipe(tiny_recipe(train={"max_steps": 1}), plugins={"asks": asks})
    assert isinstance(asks.lora, LoraTable) and asks.lora is asks.same and asks.lora.r == 4
    assert isinstance(asks.progress, ProgressTable)
    assert "no single recipe table of type Unused: no plugin of this run has it" in asks.error


def test_every_option_of_every_built_in_plugin_is_described():
    from adapt.plugin.manager import Catalogue
    from adapt.plugin.options import table_options

    catalogue = Catalogue.discover()
    undescribed = [
        f"{name}.{option['key']}"
        for name, entry in catalogue.entries.items()
        for option in table_options(entry.info.table)
        if not option["description"]
    ]
    assert not undescribed and len(catalogue.entries) == 22


def test_plugins_name_prints_the_plugins_options(capsys):
    import json

    from adapt.commands.cli import main

    assert main(["plugins", "lora", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["table"] == "[methods.lora]" and shown["runs_after"] == ["quantises-base"]
    assert shown["provides"] == ["adds-modules", "keeps-base-frozen"] and shown["after"] == []
    rank = {o["key"]: o for o in shown["options"]}["r"]
    assert rank == {"key": "r", "type": "int", "default": "8", "bounds": "≥ 1", "description": rank["description"]}
    targets = {o["key"]: o for o in shown["options"]}["target_modules"]
    assert targets["type"] == 'list[str] | "all-linear"' and targets["default"] == '["query", "value"]'
    assert main(["plugins", "sequence-classification"]) == 0
    out = capsys.readouterr().out
    assert '[task] with head = "sequence-classification"' in out and "text_pair_column" in out
    assert main(["plugins", "int8"]) == 0
    out = capsys.readouterr().out
    assert "provides: quantises-base" in out and "needs a method that provides one of: keeps-base-frozen" in out
    assert main(["plugins", "lroa"]) == 2
    assert "no plugin named 'lroa'; did you mean lora?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("required", "problem"),
    [
        ("1.0", None),
        ("1.2", None),
        ("1.3", None),
        ("1.4", "requires hook API 1.4, but adapt has 1.3: upgrade adapt-peft"),
        ("2.0", "requires hook API 2.0, but adapt has 1.3: upgrade adapt-peft"),
        ("0.9", "requires hook API 0.9, but adapt has 1.3: install a version of the plugin written for 1.x"),
        ("1.x", "requires_api '1.x' is not a hook API version MAJOR.MINOR (adapt's is 1.3)"),
    ],
)
def test_a_plugin_requiring_another_hook_api_is_refused_with_both_versions(required, problem):
    from adapt import HOOK_API, PluginInfo
    from adapt.plugin.manager import Catalogue

    class Needs:
        @hookimpl
        def adapt_plugin_info(self):
            return PluginInfo(summary="needs a hook API", requires_api=required)

    catalogue = Catalogue.discover(extra={"needs": Needs()})
    assert HOOK_API == "1.3"
    if problem is None:
        assert "needs" in catalogue.entries and "needs" not in catalogue.broken
    else:
        assert catalogue.broken["needs"] == problem and "needs" not in catalogue.entries


def test_help_and_plugins_start_without_importing_torch():
    import subprocess
    import sys

    code = """
import contextlib, io, sys
from adapt.commands.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
    after_help = sorted(m for m in ("torch", "transformers", "datasets") if m in sys.modules)
    main(["plugins", "--json"])
    main(["plugins", "lora"])
print(after_help, sorted(m for m in ("torch", "transformers", "datasets", "peft", "accelerate") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[] []", result.stderr[-2000:]


def test_run_is_imported_from_the_facade_only_the_deprecated_types_shim_is_gone():
    import adapt
    import adapt.types

    assert not hasattr(adapt.types, "Run")  # the 0.1.0 shim lived one version; it kept types -> context a circle
    assert adapt.Run.__module__ == "adapt.run.context"


def test_the_adapters_activation_choices_are_the_activations_it_builds():
    import typing

    from adapt_adapters import AdaptersTable
    from adapt_adapters.inject import ACTIVATIONS

    choices = typing.get_args(AdaptersTable.model_fields["non_linearity"].annotation)
    assert set(choices) == set(ACTIVATIONS)


def test_names_that_left_the_public_api_still_import_with_a_warning_naming_the_replacement():
    import adapt
    from adapt.model.modeling import load_task_model

    with pytest.warns(DeprecationWarning, match=r"adapt.load_task_model is no longer public API: subclass adapt.Head"):
        assert adapt.load_task_model is load_task_model
    assert "load_task_model" not in adapt.__all__ and "Head" in adapt.__all__
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        adapt.nonexistent  # noqa: B018


def test_a_head_subclass_missing_a_declaration_is_a_broken_plugin_naming_it():
    from adapt import Head
    from adapt.plugin.manager import Catalogue

    class Incomplete(Head):
        def resolve_names(self, run):
            return ["a", "b"]

        def make_metrics(self, run):
            return None

    catalogue = Catalogue.discover(extra={"incomplete": Incomplete})
    assert "incomplete" not in catalogue.entries
    assert "abstract" in catalogue.broken["incomplete"] and "encode" in catalogue.broken["incomplete"]


# --- what a third-party head or method needs from the public API -----------------------------------------------


def test_a_recipe_error_takes_a_message_as_a_plugin_raises_it():
    from adapt import RecipeError

    error = RecipeError("methods.bias-only.rate: must be below 1")
    assert str(error) == "methods.bias-only.rate: must be below 1" and error.exit_code == 2
    assert error.problems == ["methods.bias-only.rate: must be below 1"]
    listed = RecipeError("r.toml", ["a: bad", "b: worse"])
    assert str(listed).splitlines() == ["r.toml: 2 problems in the recipe", "  - a: bad", "  - b: worse"]


def _ids_head():
    """A sequence-classification head whose collator passes each example's index on to its metrics."""
    import torch

    from adapt_sequence_classification import SequenceClassification

    seen: list[int] = []

    class WithIds(SequenceClassification):
        def collator(self, run):
            pad = super().collator(run)

            def collate(rows):
                batch = pad([{k: v for k, v in r.items() if k != "example_index"} for r in rows])
                batch["example_index"] = torch.tensor([r["example_index"] for r in rows])
                return batch

            return collate

        def encode(self, run, dataset):
            encoded = super().encode(run, dataset)
            return encoded.map(lambda row, i: {"example_index": i}, with_indices=True)

        def make_metrics(self, run):
            metrics = super().make_metrics(run)
            update = metrics.update

            def keep(outputs, batch):
                seen.extend(batch["example_index"].tolist())  # per-example data reaches the metrics...
                update(outputs, batch)

            metrics.update = keep
            return metrics

    return WithIds, seen


def test_batch_keys_of_per_example_data_reach_the_loss_and_metrics_but_never_the_model(run_recipe, tiny_recipe):
    """Keys beginning with `adapt.EXAMPLE_DATA_PREFIX` ("example_") are the head's: the model is called without
    them (BERT's forward would refuse an unknown keyword), the loss and the metrics get them."""
    import adapt

    assert adapt.EXAMPLE_DATA_PREFIX == "example_"
    assert adapt.model_inputs({"input_ids": 1, "example_index": 2}) == {"input_ids": 1}
    head, seen = _ids_head()
    trained = run_recipe(tiny_recipe(task={"head": "with-ids", "text_column": "sentence"}), plugins={"with-ids": head})
    evaluated = len(trained.run.encoded["eval"])
    assert sorted(seen[-evaluated:]) == list(range(evaluated))  # the last evaluation saw every example once
    assert trained.summary["eval"]["accuracy"] >= 0


def test_metric_names_are_known_before_the_first_training_step(run_recipe, tiny_recipe):
    names = {}

    class Monitor:
        def adapt_on_train_start(self, run):
            names["start"] = list(run.metric_names)

    trained = run_recipe(tiny_recipe(), plugins={"monitor": Monitor()})
    assert names["start"] == ["accuracy", "macro_f1", "loss"] == list(trained.summary["eval"])


@pytest.mark.parametrize("head", ["multi-label", "regression", "token-classification", "causal-lm", "extractive-qa"])
def test_every_built_in_heads_metrics_name_what_they_compute(head):
    from adapt.plugin.manager import Catalogue

    factory = Catalogue.discover().entries[head].factory
    module = __import__(factory.__module__.split(".")[0] + ".metrics", fromlist=["x"])
    classes = [c for n, c in vars(module).items() if n.endswith("Metrics") and isinstance(c, type)]
    assert classes and all(callable(getattr(c, "names", None)) for c in classes), head


def test_the_default_prediction_tensor_names_the_hook_when_the_model_has_no_logits():
    from types import SimpleNamespace

    from transformers.modeling_outputs import QuestionAnsweringModelOutput

    from adapt import AdaptError
    from adapt.plugin.defaults import adapt_prediction_tensor

    run = SimpleNamespace(recipe=SimpleNamespace(head="extractive-qa"))
    outputs = QuestionAnsweringModelOutput(start_logits=1, end_logits=2)
    with pytest.raises(AdaptError, match="head 'extractive-qa' returns no `logits` .*start_logits, end_logits.*"):
        adapt_prediction_tensor(run=run, outputs=outputs)


def test_export_merge_compares_what_the_head_names(tiny_recipe, tmp_path, monkeypatch):
    """`adapt export --merge` checks the merged model on the head's prediction tensor, not on `.logits` itself."""
    from adapt.commands.cli import main
    from adapt.plugin.manager import Catalogue
    from adapt_sequence_classification import SequenceClassification

    asked = []

    class Probabilities(SequenceClassification):
        def prediction_tensor(self, outputs):
            asked.append(outputs.logits.shape)
            return outputs.logits.softmax(-1)

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    discover = Catalogue.discover.__func__
    monkeypatch.setattr(Catalogue, "discover", classmethod(lambda cls, e=None: discover(cls, {"probs": Probabilities})))
    recipe = tiny_recipe(task={"head": "probs", "text_column": "sentence"}, train={"epochs": 1})
    assert main(["run", str(recipe)]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--merge"]) == 0
    assert asked and (tmp_path / "out" / "adapt_export.json").is_file()
    assert main(["predict", str(tmp_path / "run"), "w1 good", "--json"]) == 0  # format gets the same tensor's rows


def test_a_head_that_windows_its_rows_gets_every_window_of_a_row_in_format(run_recipe, tiny_recipe):
    import adapt
    from adapt_sequence_classification import SequenceClassification

    formatted = []

    class Windows(SequenceClassification):
        def prediction_inputs(self, run, rows):
            given, features = super().prediction_inputs(run, rows)
            windows = [
                {**f, adapt.WINDOW_OF: row, "input_ids": f["input_ids"][: len(f["input_ids"]) - cut]}
                for row, f in enumerate(features)
                for cut in (0, 1)  # two windows of each row: all of it, and all but its last token
            ]
            for window in windows:
                window["attention_mask"] = [1] * len(window["input_ids"])
                window.pop("token_type_ids", None)
            return given, windows

        def collator(self, run):
            pad = super().collator(run)
            return lambda rows: pad([{k: v for k, v in r.items() if k != adapt.WINDOW_OF} for r in rows])

        def format(self, run, given, logits, features):
            formatted.append((given, [tuple(t.shape) for t in logits], [len(f["input_ids"]) for f in features]))
            return {"text": given, "windows": len(logits)}

    trained = run_recipe(tiny_recipe(task={"head": "windows", "text_column": "sentence"}), plugins={"windows": Windows})
    head = Windows()  # the trained run's model, predicting through the head's own adapt_predict
    head.names = ["0", "1"]
    predictions = head.adapt_predict(trained.run, [{"sentence": "w1 w2 w3"}, {"sentence": "w4 good"}])
    assert predictions == [{"text": "w1 w2 w3", "windows": 2}, {"text": "w4 good", "windows": 2}]
    (_, shapes, lengths), _ = formatted
    assert shapes == [(2,), (2,)] and lengths[0] == lengths[1] + 1  # both windows of the row, in order


def test_an_opt_in_plugin_takes_part_only_where_the_recipe_has_its_table(run_recipe, tiny_recipe):
    import json
    import tomllib

    from adapt import PluginInfo, Table

    calls = []

    class EarlyTable(Table):
        patience: int = 3

    class Early:
        def adapt_plugin_info(self):
            return PluginInfo(kind="infrastructure", table=EarlyTable, summary="stops early", opt_in=True)

        def adapt_on_train_start(self, run):
            calls.append(run.table(EarlyTable).patience)

    without = run_recipe(tiny_recipe(), plugins={"early": Early()})
    assert calls == [] and "early" not in without.summary["plugins"]
    saved = tomllib.loads((without.output_dir / "recipe.toml").read_text())
    assert "early" not in saved["plugins"]
    asked = run_recipe(tiny_recipe(output={"overwrite": True}, plugins={"early": {}}), plugins={"early": Early()})
    assert calls == [3] and "early" in asked.summary["plugins"]
    saved = tomllib.loads((asked.output_dir / "recipe.toml").read_text())
    assert saved["plugins"]["early"] == {"patience": 3}  # kept in the recipe as run, so a resume opts in again
    assert json.loads((asked.output_dir / "summary.json").read_text())["plugins"]["early"]["kind"] == "infrastructure"


def test_training_batches_are_seeded_padded_and_leave_the_random_streams_alone(tiny_recipe, monkeypatch):
    import random

    import torch

    from adapt.model.build import encode, start_run
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    catalogue = Catalogue.discover()
    run, hooks = start_run(load_recipe(tiny_recipe(), catalogue.infos), catalogue)
    encode(run, hooks)
    torch_state, python_state = torch.random.get_rng_state(), random.getstate()
    first, again = run.training_batches(3, batch_size=4), run.training_batches(3, batch_size=4)
    assert torch.equal(torch.random.get_rng_state(), torch_state) and random.getstate() == python_state
    assert [type(b) for b in first] == [dict] * 3 and all(b["input_ids"].shape[0] == 4 for b in first)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again, strict=True))
    assert all(b["attention_mask"].shape == b["input_ids"].shape and "labels" in b for b in first)
    rows = len(run.encoded["train"])
    assert sum(b["input_ids"].shape[0] for b in run.training_batches(10**6, batch_size=8)) == rows  # each row once
