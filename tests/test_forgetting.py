"""Forgetting measured (the forgetting plugin) and held back (the l2sp and distill regularisers)."""

from __future__ import annotations

import json

import pytest


def drift(summary: dict) -> float:
    return summary["forgetting"]["drift"]


def moved(run, before: dict) -> float:
    """How far the pretrained (non-head) weights moved: ||theta - theta_0||."""
    after = dict(run.unwrapped_model.named_parameters())
    total = sum(
        (after[n].detach() - before[n]).pow(2).sum() for n in before if n in after and not n.startswith("classifier")
    )
    return float(total) ** 0.5


@pytest.mark.parametrize("cache", [True, False])
def test_a_frozen_backbone_does_not_drift(train_tiny, cache):
    _, _, summary = train_tiny(methods={"head-only": {"cache_features": cache}})
    forgetting = summary["forgetting"]
    assert forgetting["reference_texts"] == 64 and forgetting["reference"] == "eval split"
    assert forgetting["cka"] == pytest.approx(1.0, abs=1e-6) and forgetting["cosine"] == pytest.approx(1.0, abs=1e-6)


FULL = {"methods": {"full": {}}, "train": {"learning_rate": 3e-3, "epochs": 2}}


def logged(run, term: str) -> bool:
    logs = [json.loads(line) for line in (run.output_dir / "metrics.jsonl").open()]
    return all(term in r for r in logs if r["kind"] == "train")


def test_full_fine_tuning_drifts_and_l2sp_and_distill_hold_it_back(train_tiny):
    again = ["output.overwrite=true"]
    run, before, full = train_tiny(**FULL)
    assert drift(full) > 0.01
    baseline = moved(run, before)

    run, before, l2sp = train_tiny(again, methods={"full": {}, "l2sp": {"weight": 50.0}}, train=FULL["train"])
    assert moved(run, before) < 0.5 * baseline
    assert drift(l2sp) < drift(full) and logged(run, "l2sp")

    run, _, distill = train_tiny(again, methods={"full": {}, "distill": {"weight": 20.0}}, train=FULL["train"])
    assert drift(distill) < drift(full) and logged(run, "distill")


def test_distill_under_lora_switches_the_adapter_off_instead_of_copying(train_tiny, monkeypatch):
    import adapt_distill

    made = []
    original = adapt_distill.Distill.adapt_transform_model

    def spy(self, run):
        original(self, run)
        if not run.planning:  # (the memory plan applies the methods too, on a meta model)
            made.append(self)

    monkeypatch.setattr(adapt_distill.Distill, "adapt_transform_model", spy)
    _, _, summary = train_tiny(methods={"lora": {"r": 4, "target_modules": ["query", "value"]}, "distill": {}})
    (plugin,) = made
    assert plugin.base is None  # the PEFT model itself, adapter disabled, is the base
    assert summary["eval"]["accuracy"] >= 0 and drift(summary) >= 0


def test_regularisers_name_what_they_need(tiny_recipe, monkeypatch):
    from adapt.errors import RecipeError
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    catalogue = Catalogue.discover()
    needs = r"'l2sp' needs one of full, gradual-unfreezing, top-layers beside it \(\[methods.full\]\): a method that"
    with pytest.raises(RecipeError, match=needs + " trains pretrained weights"):
        load_recipe(tiny_recipe(methods={"lora": {}, "l2sp": {}}), catalogue.infos)
    with pytest.raises(RecipeError, match="'distill' needs one of"):
        load_recipe(tiny_recipe(methods={"head-only": {}, "distill": {}}), catalogue.infos)


class Interrupt:
    def adapt_on_step_end(self, run):
        if run.step == 8:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_a_resumed_run_measures_against_the_model_it_started_from(tiny_recipe, tmp_path, monkeypatch):
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.run.interrupts import Interrupted
    from adapt.train.orchestration import run_recipe

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    catalogue = Catalogue.discover()
    train = {"learning_rate": 3e-3, "eval_every": 4}

    def recipe(name: str):
        path = tiny_recipe(f"{name}.toml", methods={"full": {}}, train=train, output={"dir": str(tmp_path / name)})
        return load_recipe(path, catalogue.infos)

    straight = run_recipe(recipe("straight"), catalogue)
    with pytest.raises(Interrupted):
        run_recipe(recipe("stopped"), Catalogue.discover(extra={"interrupt": Interrupt()}))
    resumed = run_recipe(recipe("stopped"), catalogue, resume="latest")
    assert resumed["resumed_from"].endswith("step-8")
    assert resumed["forgetting"] == straight["forgetting"] and drift(straight) > 0


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT saved with a masked-LM head (as bert-base-uncased is), its tokenizer alike."""
    import shutil

    import torch
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig.from_pretrained(tiny_bert_dir)).save_pretrained(folder)
    for file in tiny_bert_dir.iterdir():
        if "token" in file.name or file.name == "vocab.txt":
            shutil.copy(file, folder / file.name)
    return folder


def test_a_checkpoint_with_an_mlm_head_reports_its_pretraining_loss(train_tiny, tiny_mlm_dir):
    model = {"name": str(tiny_mlm_dir)}
    _, _, frozen = train_tiny(model=model, methods={"head-only": {"cache_features": False}})
    assert frozen["forgetting"]["mlm_loss_before"] == pytest.approx(frozen["forgetting"]["mlm_loss_after"], abs=1e-6)

    again = ["output.overwrite=true"]
    run, _, full = train_tiny(again, model=model, **FULL)
    run, _, kept = train_tiny(again, model=model, methods={"full": {}, "mlm": {"weight": 5.0}}, train=FULL["train"])
    assert logged(run, "mlm")
    assert kept["forgetting"]["mlm_loss_after"] < full["forgetting"]["mlm_loss_after"]
    assert full["forgetting"]["mlm_loss_before"] == kept["forgetting"]["mlm_loss_before"]  # the same masks


def test_auxiliary_mlm_needs_a_checkpoint_with_the_head(train_tiny):
    from adapt.errors import AdaptError

    with pytest.raises(AdaptError, match=r"methods.mlm: .* was saved without a masked-LM head .*\[methods.distill\]"):
        train_tiny(methods={"full": {}, "mlm": {}})
