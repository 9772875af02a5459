"""Saving memory: activation checkpointing computes the same gradients, for every method that trains."""

from __future__ import annotations

import re

import pytest

LORA = {"lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "dropout": 0.1}}
METHODS = {
    "lora": LORA,
    "adapters": {"adapters": {"reduction_factor": 4}},
    "full": {"full": {}},
    "int8-lora": {"int8": {}, **LORA},
}


@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing_gives_the_same_gradients(method, same_gradients_with_checkpointing):
    same_gradients_with_checkpointing(methods=METHODS[method])


def test_gradient_checkpointing_with_token_classification(same_gradients_with_checkpointing, toy_ner):
    same_gradients_with_checkpointing(
        methods=LORA,
        data={"train_file": str(toy_ner["train"]), "eval_file": str(toy_ner["eval"])},
        task={"head": "token-classification", "tokens_column": "tokens", "tags_column": "ner_tags"},
    )


def test_the_measured_peak_counts_what_training_adds_above_the_baseline(tiny_recipe, monkeypatch):
    import torch

    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.train.orchestration import run_recipe

    class Ballast:
        """256 MiB held (and touched) from the first step to the end of training."""

        def adapt_on_step_end(self, run):
            if run.step == 1:
                self.block = torch.ones(64 * 2**20, dtype=torch.float32)

        def adapt_on_train_end(self):
            self.block = None

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    catalogue = Catalogue.discover(extra={"ballast": Ballast()})
    memory = run_recipe(load_recipe(tiny_recipe(train={"epochs": 1}), catalogue.infos), catalogue)["memory"]
    assert 256 * 2**20 <= memory["measured_peak_bytes"] < 512 * 2**20
    assert memory["baseline_rss_mib"] > 100 and memory["peak_rss_mib"] > memory["baseline_rss_mib"] + 256


def test_out_of_memory_is_one_message_with_what_would_fit(tiny_recipe, monkeypatch):
    import torch

    from adapt.errors import AdaptError
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.train.orchestration import run_recipe

    class Exhausted:
        def adapt_loss_terms(self, run):
            if run.step == 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    catalogue = Catalogue.discover(extra={"exhausted": Exhausted()})
    recipe = tiny_recipe(train={"checkpoint_every": 2, "gradient_checkpointing": True})
    with pytest.raises(AdaptError) as info:
        run_recipe(load_recipe(recipe, catalogue.infos), catalogue)
    message = str(info.value)
    assert message.startswith("out of memory on cpu during optimizer step 4 (batches of 16, up to 32 tokens)")
    assert "Tried to allocate 2.00 GiB" in message and "the last checkpoint is step-2" in message
    # the plan had said it fits: the message says so, and what the plan does not count
    assert re.search(r"The memory plan estimated \d+\.\d GiB of the", message) and "what it does not count" in message
    assert "gradient_checkpointing" not in message  # already on
    assert (
        'train.optimizer = "adamw-8bit"' in message
        and "train.batch_size = 8 with train.grad_accum_steps = 2" in message
    )


def test_out_of_memory_over_the_plan_gives_the_plans_advice(tiny_recipe, monkeypatch):
    """Run past a plan that did not fit (--ignore-plan): the message carries the plan's tips, each with its total."""
    from types import SimpleNamespace

    import torch

    from adapt.plan.device import parse_device
    from adapt.plan.planner import make_plan
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.train.memory_advice import out_of_memory_advice

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    catalogue = Catalogue.discover()
    recipe = load_recipe(tiny_recipe(methods={"full": {}}), catalogue.infos)
    plan = make_plan(recipe, catalogue, parse_device("0.0015GiB"))
    assert plan.fits is False
    run = SimpleNamespace(recipe=recipe, accelerator=SimpleNamespace(device="cuda:0"), step=0)
    message = out_of_memory_advice(run, torch.OutOfMemoryError("CUDA out of memory."), None, plan)
    assert "The memory plan estimated" in message and "over it (the run went on anyway)" in message
    tip = next(t for t in plan.advice() if t.startswith("train.gradient_checkpointing = true: "))
    assert tip in message and "a shorter data.max_length (now 32)" in message


def test_counting_the_first_steps_flops_keeps_checkpointing_s_saving(tiny_recipe, monkeypatch, live_tensors):
    """The run counts the FLOPs of its first (and longest) micro-batch; under the count, a checkpointed step keeps
    no more alive than without it (FlopCounterMode's module hooks held every recomputed block at once)."""
    from adapt.model.build import build_model, encode, longest_rows, start_run
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.run.throughput import StepFlops

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    catalogue = Catalogue.discover()
    recipe = load_recipe(tiny_recipe(train={"gradient_checkpointing": True, "batch_size": 32}), catalogue.infos)
    run, hooks = start_run(recipe, catalogue)
    encode(run, hooks)
    build_model(run, hooks)
    model = run.model.train()
    batch = hooks.make_collator(run=run)(longest_rows(run.encoded["train"], 32))

    def peak(flops: StepFlops | None) -> int:
        with live_tensors([*model.parameters(), *model.buffers(), *batch.values()]) as live:
            if flops is None:
                model(**batch).loss.backward()
            else:
                with flops.first(batch):
                    model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        return live.peak

    plain = peak(None)
    flops = StepFlops()
    counted = peak(flops)
    assert flops.per_token and flops.per_token > 0
    assert counted == plain
