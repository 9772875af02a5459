"""LoRA's initialisations and layer selection: each trains from a recipe and its artifact reloads with plain PEFT
onto the unchanged base to the trained model's logits."""

from __future__ import annotations

import json

import pytest
import torch

from adapt.commands.cli import main

LORA = {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}


def _reloaded(tiny_bert_dir, adapter):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    return PeftModel.from_pretrained(base, adapter).eval()


def _pretrained_weights(tiny_bert_dir) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    return {n: p for n, p in model.named_parameters() if not n.startswith("classifier")}


@pytest.mark.parametrize(
    ("options", "rank"),
    [
        ({"init": "pissa"}, 8),
        ({"init": "pissa", "pissa_niter": 2}, 8),
        ({"init": "olora"}, 8),
        ({"init": "corda", "init_examples": 16}, 8),
        ({"init": "eva", "init_examples": 16, "eva_rho": 1.0}, 4),
        # "dense" includes the pooler's, which reads one row per example (no sequence dimension)
        ({"init": "eva", "init_examples": 16, "eva_rho": 1.0, "target_modules": ["query", "dense"]}, 4),
        ({"init": "corda", "init_examples": 16, "target_modules": ["query", "dense"], "exclude_modules": ["pooler.dense"]}, 8),  # noqa: E501
        ({"init": "gaussian"}, 4),
        ({"init": "orthogonal"}, 4),
    ],
)
def test_an_initialisation_trains_and_reloads_onto_the_unchanged_base(
    options, rank, train_tiny, sample_batch, tiny_bert_dir, tmp_path
):
    run, before, summary = train_tiny(methods={"lora": {**LORA, **options}})
    model = run.unwrapped_model.eval()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or "classifier" in n for n in trained)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if n not in trained)
    batch = sample_batch(run.tokenizer)
    reloaded = _reloaded(tiny_bert_dir, tmp_path / "run" / "adapter")
    config = reloaded.peft_config["default"]
    assert config.r == rank
    if rank == 2 * LORA["r"]:  # the base weights' moved part, saved as a plain LoRA adapter: nothing to initialise
        assert config.init_lora_weights is True
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=1e-4, atol=1e-5)
    assert summary["eval"]["accuracy"] > 0


def test_pissa_starts_from_the_top_singular_vectors_and_moves_them_out_of_the_base(train_tiny, tiny_bert_dir):
    run, before, _ = train_tiny(methods={"lora": {**LORA, "init": "pissa"}}, train={"epochs": 1})
    original = _pretrained_weights(tiny_bert_dir)
    name = "bert.encoder.layer.0.attention.self.query"
    weight = original[f"{name}.weight"].detach()
    a, b = (before[f"base_model.model.{name}.lora_{x}.default.weight"] for x in "AB")
    residual = before[f"base_model.model.{name}.base_layer.weight"]
    scaling = LORA["alpha"] / LORA["r"]
    torch.testing.assert_close(residual + scaling * b @ a, weight, rtol=1e-5, atol=1e-5)
    top = torch.linalg.svdvals(weight)[: LORA["r"]]
    torch.testing.assert_close(torch.linalg.svdvals(scaling * b @ a)[: LORA["r"]], top, rtol=1e-4, atol=1e-5)


def test_eva_starts_from_the_layer_inputs_singular_vectors(train_tiny):
    run, before, _ = train_tiny(methods={"lora": {**LORA, "init": "eva", "init_examples": 16, "eva_rho": 1.0}})
    a = before["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"]
    b = before["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight"]
    torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0]), rtol=1e-4, atol=1e-4)  # orthonormal rows
    assert torch.count_nonzero(b) == 0  # the update still starts at zero


def test_layers_to_transform_and_patterns_adapt_only_what_they_name(train_tiny, tiny_bert_dir, tmp_path):
    lora = {**LORA, "layers_to_transform": [1], "rank_pattern": {"value": 2}, "alpha_pattern": {"value": 4}}
    run, _, _ = train_tiny(methods={"lora": lora})
    shapes = {n: tuple(p.shape) for n, p in run.unwrapped_model.named_parameters() if "lora_A" in n}
    assert shapes and all(".layer.1." in n for n in shapes)
    assert {n.split(".")[-4]: s[0] for n, s in shapes.items()} == {"query": 4, "value": 2}
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1] and config["rank_pattern"] == {"value": 2}


@pytest.fixture(scope="module")
def tiny_mixtral_dir(tmp_path_factory):
    """A 1-layer Mixtral (2 experts): transformers keeps each layer's experts as stacked 3-D parameters."""
    from adapt.testing import _tiny_causal_lm

    return _tiny_causal_lm(
        tmp_path_factory, "tiny-mixtral", "MixtralConfig", "MixtralForCausalLM",
        hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=2, num_experts_per_tok=1, max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
        pad_token_id=0,
    )  # fmt: skip


def test_target_parameters_adapt_the_experts_of_a_mixture(train_tiny, tiny_mixtral_dir, toy_sft, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = {"r": 2, "alpha": 4, "target_modules": [], "target_parameters": ["experts.gate_up_proj"]}
    run, before, _ = train_tiny(
        model={"name": str(tiny_mixtral_dir)},
        data={"train_file": str(toy_sft["train"]), "eval_file": str(toy_sft["eval"])},
        task={"head": "causal-lm"},
        methods={"lora": lora},
    )
    model = run.unwrapped_model.eval()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n and "experts" in n for n in changed)
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_mixtral_dir), tmp_path / "run" / "adapter"
    )
    with torch.inference_mode():
        torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_target_peft_cannot_adapt_is_a_recipe_problem(tiny_recipe, capsys):
    lora = {"r": 2, "target_modules": [], "target_parameters": ["attention.self.query.weight"]}
    assert main(["run", str(tiny_recipe(methods={"lora": lora}))]) == 2
    err = capsys.readouterr().err
    assert "methods.lora: PEFT cannot apply this configuration" in err and "not a valid target" in err


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"pissa_niter": 4}, "pissa_niter applies to init = 'pissa' only, not init = 'default'"),
        ({"init": "pissa", "eva_rho": 2.0}, "eva_rho applies to init = 'eva' only, not init = 'pissa'"),
        ({"init": "olora", "init_examples": 4}, "init_examples applies to init = 'eva' or 'corda' only"),
        ({"init": "pissa", "use_dora": True}, "use_dora and init = 'pissa' do not combine"),
        ({"layers_pattern": "layer"}, "set layers_to_transform too"),
        ({"init": "svd"}, "methods.lora.init"),
    ],
)
def test_options_that_do_not_fit_together_are_refused_before_loading(tiny_recipe, capsys, options, problem):
    assert main(["check", str(tiny_recipe(methods={"lora": {**LORA, **options}}))]) == 2
    err = capsys.readouterr().err
    assert problem in err and "methods.lora" in err


def test_an_initialisation_that_rewrites_the_base_is_refused_on_a_quantised_base(tiny_recipe, capsys):
    pytest.importorskip("bitsandbytes")
    recipe = tiny_recipe(methods={"int8": {}, "lora": {**LORA, "init": "pissa"}})
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "methods.lora.init = 'pissa'" in err and "[methods.int8]" in err


def test_check_builds_a_data_initialised_model_without_tokenising(tiny_recipe, capsys):
    recipe = tiny_recipe(methods={"lora": {**LORA, "init": "eva", "init_examples": 16}})
    assert main(["check", str(recipe)]) == 0
    captured = capsys.readouterr()
    assert "reads the training data when a run starts" in captured.err and "lora" in captured.out


def test_corda_names_the_layers_whose_inputs_are_not_per_token(tiny_recipe, capsys):
    lora = {**LORA, "init": "corda", "init_examples": 4, "target_modules": ["query", "dense"]}
    assert main(["run", str(tiny_recipe(methods={"lora": lora}))]) == 2
    err = capsys.readouterr().err
    assert "bert.pooler.dense reads one row per example" in err and 'exclude_modules = ["bert.pooler.dense"]' in err
