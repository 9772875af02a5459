"""`adapt predict`, `adapt eval --data` and `adapt export` on finished tiny runs: round trips that need no
training data, and merged exports that give the run's own outputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from adapt.commands.cli import main


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


def _predict(capsys, run_dir, *args) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", str(run_dir), "--json", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_predict_needs_no_training_data(tiny_recipe, toy_data, tmp_path, capsys, restore_tiny):
    assert main(["run", str(tiny_recipe())]) == 0
    run_dir = tmp_path / "run"
    texts = ["w1 w2 superb w3", "awful w4"]
    model = restore_tiny(run_dir)
    batch = dict(model.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.inference_mode():
        expected = model.model.eval()(**batch).logits.softmax(-1)
    moved = tmp_path / "elsewhere"
    shutil.move(toy_data["train"].parent, moved)  # the data the run was trained on is gone
    try:
        predictions = _predict(capsys, run_dir, *texts)
    finally:
        shutil.move(moved, toy_data["train"].parent)
    for prediction, text, probs in zip(predictions, texts, expected.tolist(), strict=True):
        assert prediction["text"] == text
        assert prediction["scores"] == pytest.approx({"0": probs[0], "1": probs[1]}, abs=1e-6)
        assert prediction["label"] == str(int(probs[1] > probs[0]))
        assert prediction["score"] == max(probs) == pytest.approx(max(probs))


def test_predict_reads_rows_from_a_file_and_prints_for_people(tiny_recipe, toy_data, tmp_path, capsys):
    assert main(["run", str(tiny_recipe())]) == 0
    rows = _predict(capsys, tmp_path / "run", "--file", str(toy_data["eval"]))
    labels = [line.split("\t")[1] for line in toy_data["eval"].read_text().splitlines()[1:]]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    accuracy = sum(r["label"] == y for r, y in zip(rows, labels, strict=True)) / len(labels)
    assert accuracy == pytest.approx(summary["eval"]["accuracy"])
    assert main(["predict", str(tmp_path / "run"), "lovely w9"]) == 0
    assert "text: lovely w9\nlabel: " in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "run")]) == 2
    assert "give one or more TEXT" in capsys.readouterr().err


def test_eval_on_another_file_loads_no_training_split(tiny_recipe, toy_data, tmp_path, capsys):
    assert main(["run", str(tiny_recipe())]) == 0
    subset = tmp_path / "subset.tsv"
    subset.write_text("".join(toy_data["eval"].read_text().splitlines(keepends=True)[:11]))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(subset), "--json"]) == 0
    on_subset = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tmp_path / "run"), "--json", "--set", "data.max_eval_samples=10"]) == 0
    assert json.loads(capsys.readouterr().out) == on_subset
    assert main(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "nope.tsv")]) == 2
    assert "--data: no such file" in capsys.readouterr().err


def test_merged_lora_export_is_a_plain_transformers_model_with_the_same_outputs(
    tiny_recipe, tmp_path, sample_batch, restore_tiny, capsys
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert main(["run", str(tiny_recipe())]) == 0
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run"), str(out), "--merge", "--atol", "1e-5"]) == 0
    record = json.loads((out / "adapt_export.json").read_text())
    assert record["check"]["top1_agreement"] == 1.0 and record["check"]["max_abs_logit_diff"] <= 1e-5
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "0", 1: "1"}
    batch = sample_batch(AutoTokenizer.from_pretrained(out))
    restored = restore_tiny(tmp_path / "run").model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, restored(**batch).logits, atol=1e-5, rtol=0)
    assert main(["export", str(tmp_path / "run"), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_unmerged_lora_export_loads_with_peft(tiny_recipe, tmp_path):
    from peft import AutoPeftModelForSequenceClassification

    assert main(["run", str(tiny_recipe())]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "adapter_config.json").is_file()
    assert (tmp_path / "export" / "tokenizer_config.json").is_file()
    model = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "export")
    assert model.peft_config["default"].r == 4


def test_export_refuses_a_merge_beyond_tolerance_and_writes_nothing(tiny_recipe, tmp_path, capsys, monkeypatch):
    import adapt.commands.export

    assert main(["run", str(tiny_recipe())]) == 0
    real = adapt.commands.export.compare
    monkeypatch.setattr(adapt.commands.export, "compare", lambda a, b: {**real(a, b), "max_abs_logit_diff": 0.5})
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export"), "--merge"]) == 1
    assert "differ from the run's by up to 0.5" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


def test_merged_export_of_lora_on_an_8bit_base_is_dequantised(tiny_recipe, tmp_path):
    from transformers import AutoModelForSequenceClassification

    methods = {"int8": {}, "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}}
    assert main(["run", str(tiny_recipe(methods=methods, train={"epochs": 1}))]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export"), "--merge", "--atol", "1e-2"]) == 0
    check = json.loads((tmp_path / "export" / "adapt_export.json").read_text())["check"]
    assert check["top1_agreement"] == 1.0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    assert {type(m).__name__ for m in model.modules()} >= {"Linear"}
    assert not any("8bit" in type(m).__name__ for m in model.modules())


def test_adapters_cannot_be_exported_and_nothing_is_written(tiny_recipe, tmp_path, capsys):
    assert main(["run", str(tiny_recipe(methods={"adapters": {}}, train={"epochs": 1}))]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export")]) == 1
    assert "methods.adapters: bottleneck adapters add layers" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


def test_token_classification_predicts_tags_per_word_and_entities(tiny_recipe, toy_ner, tmp_path, capsys):
    recipe = tiny_recipe(
        data={"train_file": str(toy_ner["train"]), "eval_file": str(toy_ner["eval"])},
        task={"head": "token-classification"},
        methods={"full": {}},
        train={"epochs": 3, "learning_rate": 3e-3},
    )
    assert main(["run", str(recipe)]) == 0
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == {"tags": ["B-NEG", "B-POS", "O"]}
    (prediction,) = _predict(capsys, tmp_path / "run", "w1 superb w2 awful")
    assert prediction["words"] == ["w1", "superb", "w2", "awful"]
    assert prediction["tags"] == ["O", "B-POS", "O", "B-NEG"]
    assert prediction["entities"] == [
        {"text": "superb", "type": "POS", "start": 1, "end": 2},
        {"text": "awful", "type": "NEG", "start": 3, "end": 4},
    ]
    from_file = _predict(capsys, tmp_path / "run", "--file", str(toy_ner["eval"]))
    rows = [json.loads(line) for line in toy_ner["eval"].read_text().splitlines()]
    assert [p["words"] for p in from_file] == [r["tokens"] for r in rows]


def test_data_preprocess_derives_columns_and_names_itself_in_errors(tiny_recipe, tmp_path, capsys):
    tasks = tmp_path / "tasks.py"
    tasks.write_text(
        "def shout(row):\n    return {'text': row['sentence'], 'y': 1 - row['label']}\n"
        "def broken(row):\n    return row['nope']\n"
    )
    recipe = tiny_recipe(
        data={"preprocess": f"{tasks}:shout"},
        task={"head": "sequence-classification", "text_column": "text", "label_column": "y"},
        train={"epochs": 1},
    )
    assert main(["run", str(recipe)]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval"]["accuracy"] >= 0
    problems = {
        f"{tmp_path}/missing.py:shout": "data.preprocess: no such file",
        f"{tasks}:nothing": "data.preprocess: '"
        + str(tasks)
        + "' defines no function 'nothing'; it defines: shout, broken",
        f"{tasks}:broken": "data.preprocess: " + str(tasks) + ":broken failed on row",
        "tasks.txt:shout": "data.preprocess: expected 'FILE.py:FUNCTION' (e.g. 'recipes/my_tasks.py:to_prompt'), "
        "got 'tasks.txt:shout'",
    }
    for spec, message in problems.items():
        capsys.readouterr()
        code = main(
            ["run", str(recipe), "--set", f"data.preprocess={json.dumps(spec)}", "--set", "output.overwrite=true"]
        )
        assert code in (1, 2)
        assert message in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("merge", [False, True], ids=["plain", "merge"])
def test_a_fully_fine_tuned_run_exports_as_it_is(tiny_recipe, tmp_path, sample_batch, restore_tiny, merge):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert main(["run", str(tiny_recipe(methods={"full": {}}, train={"epochs": 1}))]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export"), *(["--merge"] if merge else [])]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    batch = sample_batch(AutoTokenizer.from_pretrained(tmp_path / "export"))
    restored = restore_tiny(tmp_path / "run", methods={"full": {}}).model.eval()
    with torch.no_grad():
        # adapt trims the top block (task.trim_top_block), plain transformers does not: equal up to rounding
        torch.testing.assert_close(model(**batch).logits, restored(**batch).logits, rtol=1e-5, atol=1e-6)


def test_export_options_must_be_positive(capsys):
    for option in (["--check-examples", "0"], ["--atol", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "RUN", "OUT", "--merge", *option])
        assert exit_info.value.code == 2
        assert f"argument {option[0]}: must be above 0, got {option[1]}" in capsys.readouterr().err
