"""The regression, multi-label and causal-lm heads on tiny models: metrics by hand, a toy set each head
learns, prompt masking, and predict / export round trips."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adapt.commands.cli import main
from adapt.testing import multi_label_rows, write_jsonl
from adapt_causal_lm.encode import CausalCollator, chat_example, encode_batch, join
from adapt_causal_lm.metrics import PerplexityMetrics
from adapt_multi_label.metrics import MultiLabelMetrics
from adapt_regression.metrics import RegressionMetrics, ranks

LEARN = {"epochs": 20, "learning_rate": 3e-3}  # full fine-tuning of the tiny BERT learns the toy sets


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


def train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


# --- regression ------------------------------------------------------------------------------------------


def test_regression_metrics_by_hand_across_two_processes():
    first, second = RegressionMetrics(["y"]), RegressionMetrics(["y"])
    first.update(SimpleNamespace(logits=torch.tensor([[1.0], [2.0]])), {"labels": torch.tensor([[1.0], [3.0]])})
    second.update(SimpleNamespace(logits=torch.tensor([[3.0], [3.0]])), {"labels": torch.tensor([[2.0], [5.0]])})
    first.merge(second)
    result = first.compute()
    # predictions 1 2 3 3, truth 1 3 2 5: errors 0 -1 1 -2
    assert result["mse"] == pytest.approx(6 / 4) and result["mae"] == pytest.approx(4 / 4)
    assert result["rmse"] == pytest.approx((6 / 4) ** 0.5)
    assert result["pearson"] == pytest.approx(0.6625413488689132)  # numpy.corrcoef
    assert result["spearman"] == pytest.approx(0.6324555320336759)  # scipy.stats.spearmanr (tied ranks)
    assert ranks(torch.tensor([[3.0], [1.0], [3.0], [2.0]])).flatten().tolist() == [3.5, 1.0, 3.5, 2.0]


def test_regression_learns_two_targets_and_predicts_them(tiny_recipe, toy_regression, tmp_path, capsys):
    recipe = tiny_recipe(
        data={"train_file": str(toy_regression["train"]), "eval_file": str(toy_regression["eval"])},
        task={"head": "regression", "text_column": "text", "target_columns": ["sentiment", "length"]},
        methods={"full": {}},
        train=LEARN,
    )
    assert main(["run", str(recipe)]) == 0
    losses = train_losses(tmp_path / "run")
    assert losses[-1] < 0.2 * losses[0]
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["eval"]
    assert metrics["pearson_length"] > 0.9 and metrics["mse_length"] < 0.05  # sentences of 1 to 24 words
    assert metrics["pearson"] == pytest.approx((metrics["pearson_sentiment"] + metrics["pearson_length"]) / 2)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--json", "w1 w2 w3 lovely w4 w5 w6 w7 w8 w9"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert set(prediction) == {"text", "sentiment", "length"}
    assert prediction["length"] == pytest.approx(1.0, abs=0.25)


def test_regression_names_a_column_that_is_not_numeric(tiny_recipe, toy_regression, adapt_cli):
    recipe = tiny_recipe(
        data={"train_file": str(toy_regression["train"]), "eval_file": str(toy_regression["eval"])},
        task={"head": "regression", "text_column": "text", "target_columns": ["text"]},
        methods={"full": {}},
    )
    result = adapt_cli("run", str(recipe))
    assert result.returncode == 2 and "task.target_columns: column 'text' holds string, not numbers" in result.stderr


# --- multi-label ------------------------------------------------------------------------------------------


def test_multi_label_metrics_by_hand():
    # 3 labels, 3 examples; truth and predictions at threshold 0.5
    truth = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0]])
    predicted = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0]])
    logits = torch.where(predicted.bool(), 2.0, -2.0)
    metrics = MultiLabelMetrics(3, threshold=0.5)
    metrics.update(SimpleNamespace(logits=logits), {"labels": truth})
    result = metrics.compute()
    # per label tp/fp/fn: [2,0,0] [2,0,0] [0,1,1] -> F1 1, 1, 0; micro tp 4 fp 1 fn 1
    assert result["macro_f1"] == pytest.approx(2 / 3)
    assert result["micro_f1"] == pytest.approx(8 / 10)
    assert result["micro_precision"] == pytest.approx(4 / 5) and result["micro_recall"] == pytest.approx(4 / 5)
    assert result["subset_accuracy"] == pytest.approx(1 / 3)  # only the last row is exactly right
    expected_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, truth).item()
    assert result["loss"] == pytest.approx(expected_loss)


def test_multi_label_learns_and_predicts_at_the_threshold(tiny_recipe, tmp_path, capsys, toy_multi_label):
    recipe = tiny_recipe(
        data={"train_file": str(toy_multi_label["train"]), "eval_file": str(toy_multi_label["eval"])},
        task={"head": "multi-label", "text_column": "text", "label_column": "tags", "threshold": 0.5},
        methods={"full": {}},
        train=LEARN,
    )
    assert main(["run", str(recipe)]) == 0
    # The tiny BERT learns one of the two labels perfectly and stays at chance on the other (its pooled
    # vector ends up carrying one feature); MiniLM learns all four of the entity-types recipe.
    losses = train_losses(tmp_path / "run")
    assert losses[-1] < 0.6 * losses[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval"]["micro_f1"] >= 0.7
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == {"labels": ["good", "long"], "threshold": 0.5}
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--json", "w1 w2 w3 good w4 w5 w6 w7", "w3 w4", "superb w5"]) == 0
    both, neither, good = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for prediction in (both, neither, good):
        assert prediction["labels"] == [name for name, p in prediction["scores"].items() if p > 0.5]
    # whichever label it learned (the batch order decides which) is predicted where it applies and only there
    learned = "good" if "good" in both["labels"] else "long"
    assert learned in both["labels"] and learned not in neither["labels"]
    assert (learned in good["labels"]) == (learned == "good")  # "superb w5" is good, and short
    assert set(both["scores"]) == {"good", "long"}


def test_multi_label_reads_one_column_per_label(tiny_recipe, tmp_path, capsys):
    def flat(rows):
        return [{"text": r["text"], "good": int("good" in r["tags"]), "long": int("long" in r["tags"])} for r in rows]

    train = write_jsonl(tmp_path / "c-train.jsonl", flat(multi_label_rows(64, 1)))
    dev = write_jsonl(tmp_path / "c-dev.jsonl", flat(multi_label_rows(16, 2)))
    recipe = tiny_recipe(
        data={"train_file": str(train), "eval_file": str(dev)},
        task={"head": "multi-label", "text_column": "text", "label_columns": ["long", "good"]},
        train={"epochs": 1},
    )
    assert main(["run", str(recipe)]) == 0
    model_config = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert model_config["labels"] == ["long", "good"]
    both = tiny_recipe(task={"head": "multi-label", "label_column": "tags", "label_columns": ["good"]})
    assert main(["check", str(both)]) == 2
    assert "set either 'label_column'" in capsys.readouterr().err


# --- causal LM --------------------------------------------------------------------------------------------


def test_prompt_tokens_carry_label_minus_100(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    examples = {"prompt": ["w1 good Sentiment:"], "response": ["positive"]}
    out = encode_batch(
        examples, tokenizer=tokenizer, prompt="prompt", response="response", messages=None, max_length=32
    )
    assert tokenizer.convert_ids_to_tokens(out["input_ids"][0]) == [
        "<s>",
        "w1",
        "good",
        "Sentiment:",
        "positive",
        "</s>",
    ]
    positive, eos = tokenizer.convert_tokens_to_ids(["positive", "</s>"])
    assert out["labels"][0] == [-100, -100, -100, -100, positive, eos]
    # too long: the response is kept whole and the prompt loses its beginning
    assert join([1, 2, 3, 4], [5, 6], max_length=4) == {
        "input_ids": [3, 4, 5, 6], "attention_mask": [1, 1, 1, 1], "labels": [-100, -100, 5, 6]
    }  # fmt: skip
    batch = CausalCollator(pad_id=0)([{"input_ids": [7, 8], "attention_mask": [1, 1], "labels": [-100, 8]},
                                      {"input_ids": [9], "attention_mask": [1], "labels": [9]}])  # fmt: skip
    assert batch["labels"].tolist() == [[-100, 8], [9, -100]] and batch["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_chat_conversations_mask_everything_but_the_last_answer(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    from adapt import AdaptError

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    chat = [{"role": "user", "content": "w1 good"}, {"role": "assistant", "content": "positive"}]
    prompt, response = chat_example(tokenizer, chat)
    assert tokenizer.convert_ids_to_tokens(prompt) == ["<user>", "w1", "good", "</s>", "<assistant>"]
    assert tokenizer.convert_ids_to_tokens(response) == ["positive", "</s>"]
    with pytest.raises(AdaptError, match="must end with an assistant message"):
        chat_example(tokenizer, chat[:1])


def test_perplexity_counts_only_response_tokens():
    # vocabulary of 2; uniform logits everywhere -> loss ln 2 per counted token whatever the prompt
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[-100, -100, 1, 0]])  # two response tokens, predicted from positions 1 and 2
    metrics = PerplexityMetrics()
    metrics.update(SimpleNamespace(logits=logits), {"labels": labels})
    result = metrics.compute()
    assert metrics.tokens == 2
    assert result["loss"] == pytest.approx(0.6931471805599453) and result["perplexity"] == pytest.approx(2.0)


def test_packed_logits_are_scored_like_every_position_s():
    metrics, packed = PerplexityMetrics(), PerplexityMetrics()
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, -100, 1, 0], [-100, 3, -100, -100]])
    metrics.update(SimpleNamespace(logits=logits), {"labels": labels})
    rows = logits[:, :-1][labels[:, 1:] != -100]  # what the output layer computes for the labelled positions
    packed.update(SimpleNamespace(logits=rows), {"labels": labels})
    assert packed.tokens == metrics.tokens == 3 and packed.correct == metrics.correct
    assert packed.compute()["loss"] == pytest.approx(metrics.compute()["loss"])


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_logits_for_labelled_positions_only_give_the_model_s_loss_and_gradients(family, tiny_gpt2_dir, tiny_bert_dir):
    """The output layer sees the labelled positions' rows only (prompt and padding tokens get no vocabulary row), and
    the loss and every gradient are the model's own, computed over every position's logits."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from adapt_causal_lm import labelled_logits

    def model():
        torch.manual_seed(0)
        if family == "gpt2":
            return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
        config = AutoConfig.from_pretrained(tiny_bert_dir, is_decoder=True)
        return AutoModelForCausalLM.from_pretrained(tiny_bert_dir, config=config)  # BERT's head: transform, decoder

    ids = torch.randint(5, 60, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 6 + [0]])
    labels = torch.full_like(ids, -100)
    labels[0, 4:], labels[1, 3:5], labels[2, ::5] = (
        ids[0, 4:],
        ids[1, 3:5],
        ids[2, ::5],
    )  # 7; the first token unpredicted
    whole, packed = model(), model()
    labelled_logits.install(packed)
    rows = []
    packed.get_output_embeddings().register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    results = []
    for m in (whole, packed):
        out = m(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        results.append((out, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (out, grads), (packed_out, packed_grads) = results
    assert rows == [6] and packed_out.logits.shape == (6, out.logits.shape[-1])
    torch.testing.assert_close(packed_out.logits, out.logits[:, :-1][labels[:, 1:] != -100])
    torch.testing.assert_close(packed_out.loss, out.loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == packed_grads.keys()
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():  # without labels (generation): every position's logits
        assert packed(input_ids=ids).logits.shape == out.logits.shape


@pytest.mark.parametrize(
    "methods",
    [
        {"lora": {"r": 8, "alpha": 16, "target_modules": ["c_attn", "c_proj", "c_fc"]}},
        {"adapters": {"reduction_factor": 2}},
    ],
    ids=["lora", "adapters"],
)
def test_causal_lm_learns_responses_and_generates_them(tiny_recipe, tiny_gpt2_dir, toy_sft, tmp_path, capsys, methods):
    recipe = tiny_recipe(
        model={"name": str(tiny_gpt2_dir)},
        data={"train_file": str(toy_sft["train"]), "eval_file": str(toy_sft["eval"])},
        task={"head": "causal-lm", "max_new_tokens": 3},
        methods=methods,
        train={"epochs": 8, "learning_rate": 1e-2},
    )
    assert main(["run", str(recipe)]) == 0
    losses = train_losses(tmp_path / "run")
    assert losses[-1] < 0.5 * losses[0]  # ln(vocab) at first; the response tokens are soon learnt
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = summary["eval"]
    assert set(metrics) == {"loss", "perplexity", "token_accuracy"} and metrics["perplexity"] < 3
    # a causal LM is its own pretraining head: forgetting includes its LM loss on the reference prompts
    forgetting = summary["forgetting"]
    assert forgetting["reference_texts"] == 32 and 0 < forgetting["lm_loss_before"] != forgetting["lm_loss_after"]
    capsys.readouterr()
    assert (
        main(["predict", str(tmp_path / "run"), "--json", "w1 w2 good Sentiment:", "--file", str(toy_sft["eval"])]) == 0
    )
    predictions = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(predictions) == 33 and predictions[0]["prompt"] == "w1 w2 good Sentiment:"
    assert {p["generated"] for p in predictions} <= {"positive", "negative"}


def test_a_run_trains_the_same_with_logits_for_every_position(tiny_recipe, tiny_gpt2_dir, toy_sft, tmp_path):
    """task.logits_for_labels_only (the default) against every position's logits: the same losses, step by step,
    and the same eval metrics, up to rounding."""
    runs = []
    for only in (True, False):
        recipe = tiny_recipe(
            model={"name": str(tiny_gpt2_dir)},
            data={"train_file": str(toy_sft["train"]), "eval_file": str(toy_sft["eval"])},
            task={"head": "causal-lm", "logits_for_labels_only": only},
            methods={"lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn"]}},
            output={"dir": str(tmp_path / str(only))},
        )
        assert main(["run", str(recipe)]) == 0
        runs.append(
            (train_losses(tmp_path / str(only)), json.loads((tmp_path / str(only) / "summary.json").read_text()))
        )
    (losses, summary), (every_losses, every_summary) = runs
    assert losses == pytest.approx(every_losses, rel=1e-4) and len(losses) > 2
    assert summary["eval"] == pytest.approx(every_summary["eval"], rel=1e-4)


def test_gradient_checkpointing_on_a_causal_lm(same_gradients_with_checkpointing, tiny_gpt2_dir, toy_sft):
    same_gradients_with_checkpointing(
        model={"name": str(tiny_gpt2_dir)},
        data={"train_file": str(toy_sft["train"]), "eval_file": str(toy_sft["eval"])},
        task={"head": "causal-lm"},
        methods={"lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn"], "dropout": 0.1}},
    )


def test_merged_lora_export_of_a_causal_lm_generates_like_the_run(tiny_recipe, tiny_gpt2_dir, toy_sft, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = tiny_recipe(
        model={"name": str(tiny_gpt2_dir)},
        data={"train_file": str(toy_sft["train"]), "eval_file": str(toy_sft["eval"])},
        task={"head": "causal-lm"},
        methods={"lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn"]}},
        train={"epochs": 1},
    )
    assert main(["run", str(recipe)]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export"), "--merge", "--atol", "1e-4"]) == 0
    check = json.loads((tmp_path / "export" / "adapt_export.json").read_text())["check"]
    assert check["max_abs_logit_diff"] <= 1e-4 and check["examples"] == 32
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_an_encoder_checkpoint_loads_as_a_decoder_whose_missing_modules_train(tiny_recipe, tiny_bert_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from adapt import fresh_modules

    model, info = AutoModelForCausalLM.from_pretrained(tiny_bert_dir, is_decoder=True, output_loading_info=True)
    assert fresh_modules(model, info["missing_keys"]) == ["cls.predictions.transform"]  # the decoder is tied
