"""[methods.peft]: PEFT's other methods by name, their options checked against PEFT's config classes. Each family
trains only its own parameters (and the head), and its artifact reloads with plain PEFT to the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from adapt.commands.cli import main

ATTENTION = ["query", "value"]
FAMILIES = {
    "ia3": {
        "method": "ia3",
        "target_modules": ["key", "value", "output.dense"],
        "feedforward_modules": ["output.dense"],
    },
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 4},
    "p_tuning": {"method": "p_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "loha": {"method": "loha", "r": 4, "alpha": 8, "target_modules": ATTENTION},
    "lokr": {"method": "lokr", "r": 4, "alpha": 8, "target_modules": ATTENTION},
    "vera": {"method": "vera", "r": 8, "target_modules": ATTENTION},
    "oft": {"method": "oft", "r": 0, "oft_block_size": 4, "target_modules": ATTENTION},
    "boft": {"method": "boft", "boft_block_size": 4, "target_modules": ATTENTION},
    "fourierft": {"method": "fourierft", "n_frequency": 32, "target_modules": ATTENTION},
    "ln_tuning": {"method": "ln_tuning", "target_modules": ["LayerNorm"]},
}
#: What each method adds, by a word of its parameters' names.
OWN = {
    "ia3": "ia3_l", "prompt_tuning": "prompt_encoder", "p_tuning": "prompt_encoder", "loha": "hada_", "lokr": "lokr_",
    "vera": "vera_lambda", "oft": "oft_R", "boft": "boft_", "fourierft": "fourierft_", "ln_tuning": "ln_tuning_layers",
}  # fmt: skip


def _head_or_own(name: str, method: str) -> bool:
    return OWN[method] in name or "classifier" in name


@pytest.mark.parametrize("method", FAMILIES)
def test_a_peft_method_trains_its_own_parameters_and_reloads_with_plain_peft(
    method, train_tiny, sample_batch, tiny_bert_dir, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run, before, summary = train_tiny(methods={"peft": FAMILIES[method]}, train={"learning_rate": 1e-2})
    model = run.unwrapped_model.eval()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(OWN[method] in n for n in changed), sorted(changed)[:5]
    assert all(_head_or_own(n, method) for n in changed), [n for n in changed if not _head_or_own(n, method)][:5]
    assert any("classifier" in n for n in changed)  # the head trains and is saved with the method
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    assert reloaded.peft_config["default"].peft_type.value.lower() == method
    batch = sample_batch(run.tokenizer)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-6)
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"]


@pytest.mark.parametrize("method", ["prefix_tuning", "prompt_tuning", "ia3"])
def test_a_peft_method_on_a_causal_lm_trains_and_generates(
    method, tiny_recipe, tiny_llama_dir, toy_sft, tmp_path, capsys
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    options = {"ia3": {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}}
    recipe = tiny_recipe(
        model={"name": str(tiny_llama_dir)},
        data={"train_file": str(toy_sft["train"]), "eval_file": str(toy_sft["eval"])},
        task={"head": "causal-lm", "max_new_tokens": 3},
        methods={"peft": {"method": method, **options.get(method, {"num_virtual_tokens": 4})}},
        train={"epochs": 2, "learning_rate": 1e-2},
    )
    assert main(["run", str(recipe)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "eval_loss" not in r]
    assert losses[-1] < losses[0]
    assert summary["eval"]["perplexity"] > 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--json", "w1 w2 good Sentiment:"]) == 0
    predicted = json.loads(capsys.readouterr().out.splitlines()[0])
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "run" / "adapter"
    )
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.inference_mode():
        generated = reloaded.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3)
    assert generated.shape[1] > ids.shape[1] and "generated" in predicted


def test_a_method_the_model_cannot_take_is_refused_with_peft_s_reason(tiny_recipe, capsys):
    recipe = tiny_recipe(methods={"peft": {"method": "prefix_tuning", "num_virtual_tokens": 4}})
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "methods.peft: PEFT cannot apply prefix_tuning to this model" in err and "past key values" in err


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"method": "lohaa"}, "method = 'lohaa' is not one of PEFT's methods: did you mean loha"),
        ({"method": "ia3", "target_module": ["key"]}, "target_module: not an option of ia3 (PEFT's IA3Config): did you mean target_modules"),  # noqa: E501
        ({"method": "loha", "r": "eight"}, "r: expected int, got 'eight'"),
        ({"method": "loha", "r": True}, "r: expected int, got True"),
        ({"method": "ia3", "task_type": "SEQ_CLS"}, "task_type: not a recipe option (derived from the recipe's head)"),
        ({"method": "lora"}, "use [methods.lora]"),
        ({"method": "adalora"}, "AdaLoRA reallocates ranks"),
        ({"method": "ia3", "target_modules": ["key"], "feedforward_modules": ["value"]}, "IA3Config refuses these"),
        ({}, "method"),
    ],
)  # fmt: skip
def test_options_are_checked_against_peft_s_config_class_before_loading(tiny_recipe, capsys, table, problem):
    assert main(["check", str(tiny_recipe(methods={"peft": table}))]) == 2
    err = capsys.readouterr().err
    assert problem in err and "methods.peft" in err


def test_peft_and_lora_in_one_recipe_are_refused(tiny_recipe, capsys):
    recipe = tiny_recipe(methods={"peft": FAMILIES["ia3"], "lora": {"r": 4}})
    assert main(["check", str(recipe)]) == 2
    assert "one PEFT method per run" in capsys.readouterr().err


def test_plugins_lists_each_peft_method_s_options(capsys, monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert main(["plugins", "peft"]) == 0
    out = capsys.readouterr().out
    assert "variants (adapt plugins peft VARIANT: its options):" in out and "prompt_tuning" in out and "vera" in out
    assert main(["plugins", "peft", "vera", "--json"]) == 0
    options = {row["key"]: row for row in json.loads(capsys.readouterr().out)["options"]}
    assert options["r"]["type"] == "int" and options["r"]["default"] == "256" and "task_type" not in options
    assert main(["plugins", "peft", "verra"]) == 2
    assert "no variant 'verra'; did you mean vera" in capsys.readouterr().err
    assert main(["plugins", "lora", "x"]) == 2
    assert "plugin 'lora' has no variants" in capsys.readouterr().err


def test_ia3_composes_with_an_8_bit_base(train_tiny, tmp_path):
    pytest.importorskip("bitsandbytes")
    ia3 = {"method": "ia3", "target_modules": ["key", "value"], "feedforward_modules": []}
    run, before, _ = train_tiny(methods={"int8": {}, "peft": ia3})
    changed = {n for n, p in run.unwrapped_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any("ia3_l" in n for n in changed) and all("ia3_l" in n or "classifier" in n for n in changed)
    assert any(type(m).__name__ == "Linear8bitLt" for m in run.unwrapped_model.modules())


def test_the_plan_counts_the_virtual_tokens_of_prompt_tuning(tiny_recipe, capsys):
    def activations(tokens: int) -> int:
        recipe = tiny_recipe(methods={"peft": {"method": "prompt_tuning", "num_virtual_tokens": tokens}})
        assert main(["plan", str(recipe), "--json"]) == 0
        return json.loads(capsys.readouterr().out)["activations_without_checkpointing"]

    assert activations(32) > 1.5 * activations(1)


def test_a_merged_export_folds_ia3_in_and_prompt_tuning_is_refused(train_tiny, tmp_path, capsys):
    ia3 = {"method": "ia3", "target_modules": ["key", "value"], "feedforward_modules": []}
    train_tiny(methods={"peft": ia3})
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "merged"), "--merge"]) == 0
    assert (tmp_path / "merged" / "config.json").is_file() and not (
        tmp_path / "merged" / "adapter_config.json"
    ).exists()
    train_tiny(methods={"peft": FAMILIES["prompt_tuning"]}, overrides=["output.overwrite=true"])
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "merged2"), "--merge"]) == 2
    assert "adds virtual tokens to the inputs" in capsys.readouterr().err
