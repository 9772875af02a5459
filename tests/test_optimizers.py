"""Optimizers: every built-in trains the tiny model, 8-bit AdamW keeps one byte per state value, LoRA+ gives
the B matrices their own learning rate, options are validated per optimizer, and a plugin can bring its own."""

from __future__ import annotations

import json

import pytest
import torch

from adapt.errors import RecipeError
from adapt.recipe.loader import load_recipe

FULL = {"full": {}}
LEARNING_RATES = {"adamw": 3e-3, "adamw-8bit": 3e-3, "paged-adamw-8bit": 3e-3, "adafactor": 3e-2, "sgd": 5e-2}


def train_losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


@pytest.mark.parametrize("optimizer", LEARNING_RATES)
def test_every_built_in_optimizer_trains(optimizer, train_tiny, toy_ner, tmp_path):
    """Full fine-tuning on the toy tagging task (tags follow the words): the loss falls with each optimizer."""
    options = {"min_8bit_size": 1} if "8bit" in optimizer else {}
    run, before, summary = train_tiny(
        methods=FULL,
        data={"train_file": str(toy_ner["train"]), "eval_file": str(toy_ner["eval"])},
        task={"head": "token-classification", "tokens_column": "tokens", "tags_column": "ner_tags"},
        train={
            "optimizer": optimizer,
            "optimizer_options": options,
            "learning_rate": LEARNING_RATES[optimizer],
            "epochs": 3,
        },
    )
    losses = train_losses(tmp_path / "run")
    assert losses[-1] < 0.5 * losses[0], losses
    expected = {"adamw": "AdamW", "adafactor": "Adafactor", "sgd": "SGD"}.get(optimizer, "AdamW8bit")
    assert type(run.optimizer.optimizer).__name__ == expected


def test_8bit_adamw_keeps_one_byte_per_state_value(train_tiny):
    train = {"optimizer": "adamw-8bit", "optimizer_options": {"min_8bit_size": 1}, "epochs": 1}
    run, _, _ = train_tiny(methods=FULL, train=train)
    values = state_bytes = overhead = 0
    for param, state in run.optimizer.optimizer.state.items():
        for key in ("state1", "state2"):  # first and second moments
            assert state[key].dtype == torch.uint8 and state[key].numel() == param.numel()
            values += state[key].numel()
            state_bytes += state[key].numel() * state[key].element_size()
        overhead += sum(state[k].numel() * state[k].element_size() for k in ("absmax1", "absmax2"))
    assert state_bytes / values == 1.0  # against 4 bytes per value for torch's AdamW
    assert overhead < 0.07 * state_bytes  # one float32 scale per block of 256 values (more where tensors are small)


def test_small_tensors_keep_32bit_state_below_min_8bit_size(train_tiny):
    run, _, _ = train_tiny(methods=FULL, train={"optimizer": "adamw-8bit", "epochs": 1})
    dtypes = {state["state1"].dtype for state in run.optimizer.optimizer.state.values()}
    assert dtypes == {torch.float32}  # every tensor of the tiny model has fewer than 4096 values


def test_lora_plus_gives_the_b_matrices_their_own_learning_rate(train_tiny):
    lora = {"lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "lr_ratio": 16}}
    run, _, _ = train_tiny(methods=lora, train={"epochs": 1, "learning_rate": 1e-3})
    groups = {g["name"]: g for g in run.optimizer.param_groups}
    assert set(groups) == {"lora_B", "decay", "no_decay"}
    assert groups["lora_B"]["initial_lr"] == pytest.approx(16e-3) and groups["decay"]["initial_lr"] == 1e-3
    names = {id(p): n for n, p in run.unwrapped_model.named_parameters()}
    assert all(".lora_B." in names[id(p)] for p in groups["lora_B"]["params"])
    assert not any(".lora_B." in names[id(p)] for p in groups["decay"]["params"])


def test_optimizer_options_are_validated_per_optimizer(tiny_recipe):
    from adapt.plugin.manager import Catalogue

    catalogue = Catalogue.discover()
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe(train={"optimizer": "adamw", "optimizer_options": {"momentum": 0.9}}), catalogue.infos)
    (problem,) = info.value.problems
    assert problem.startswith("train.optimizer_options: options of 'adamw': 'momentum': unknown key")
    assert "valid keys: betas, eps, fused" in problem
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe(train={"optimizer": "lion"}), catalogue.infos)
    assert "'adamw', 'adamw-8bit', 'paged-adamw-8bit', 'adafactor' or 'sgd'" in info.value.problems[0]


def test_paged_8bit_adamw_without_cuda_says_it_runs_unpaged(train_tiny):
    with pytest.warns(UserWarning, match="'paged-adamw-8bit' pages optimizer state .* runs as 'adamw-8bit'"):
        run, _, _ = train_tiny(methods=FULL, train={"optimizer": "paged-adamw-8bit", "epochs": 1})
    assert type(run.optimizer.optimizer).__name__ == "AdamW8bit"


def test_a_plugin_brings_its_own_optimizer(tiny_recipe, monkeypatch):
    from adapt.plugin.manager import Catalogue
    from adapt.train.orchestration import run_recipe

    class Plain:
        def adapt_make_optimizer(self, run, param_groups):
            self.groups = param_groups
            return torch.optim.SGD(param_groups, lr=run.recipe.train.learning_rate)

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugin = Plain()
    catalogue = Catalogue.discover(extra={"plain-sgd": plugin})
    summary = run_recipe(load_recipe(tiny_recipe(train={"epochs": 1}), catalogue.infos), catalogue)
    assert summary["steps"] == 12 and [g["name"] for g in plugin.groups] == ["decay", "no_decay"]


def test_adafactor_on_a_torch_without_it_says_so(train_tiny, monkeypatch):
    from adapt.errors import AdaptError

    monkeypatch.delattr(torch.optim, "Adafactor")  # as on torch 2.4, which the requirement admits
    with pytest.raises(AdaptError, match="'adafactor' is torch.optim.Adafactor, new in torch 2.5; this is torch"):
        train_tiny(methods=FULL, train={"optimizer": "adafactor", "epochs": 1})


@pytest.mark.parametrize(
    "methods",
    [
        {"lora": {"r": 4, "target_modules": ["query", "value"]}},
        {"adapters": {}},
        {"head-only": {}},
        {"gradual-unfreezing": {}},
        {"int8": {"bits": 8}, "lora": {"r": 4, "target_modules": ["query", "value"]}},
    ],
    ids=["lora", "adapters", "head-only", "gradual-unfreezing", "int8+lora"],
)
def test_8bit_adamw_trains_every_method(methods, train_tiny, tmp_path):
    """What each method trains gets 8-bit state (min_8bit_size 1: the tiny tensors would otherwise stay 32-bit),
    frozen parameters get none, and the loss falls."""
    train = {"optimizer": "adamw-8bit", "optimizer_options": {"min_8bit_size": 1}, "epochs": 3, "learning_rate": 1e-2}
    run, _, _ = train_tiny(methods=methods, train=train)
    state = run.optimizer.optimizer.state
    trained = [p for p in run.model.parameters() if p.requires_grad]
    with_state = [p for p in trained if p in state]
    assert with_state and all(state[p]["state1"].dtype == torch.uint8 for p in with_state)
    assert all(p.requires_grad for p in state)  # no state for what the method froze
    losses = train_losses(tmp_path / "run")
    assert losses[-1] < losses[0], losses
