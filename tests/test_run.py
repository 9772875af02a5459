"""`adapt run` end to end on the tiny model: the run directory, LoRA's effect, and the adapter reloading."""

from __future__ import annotations

import json

import pytest
import torch

from adapt.commands.cli import main


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


def test_run_writes_the_run_directory(tiny_recipe, tmp_path, capsys):
    import os

    os.umask(0o022)
    assert main(["run", str(tiny_recipe(train={"eval_every": 5}, plugins={"disable": []}))]) == 0
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".adapt-run.json",  # the marker: adapt wrote this folder, and its run finished
        ".adapt-run.lock",  # held while a process trains into the folder
        "adapter",
        "curves.png",  # the plots plugin's loss, learning rate and metrics
        "labels.json",
        "metrics.jsonl",
        "recipe.toml",
        "summary.json",
    ]
    assert sorted(p.name for p in (run_dir / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["epochs"] == 2.0 and summary["train_samples"] == 384
    assert set(summary["eval"]) == {"accuracy", "macro_f1", "loss"}
    params = summary["parameters"]
    assert 0 < params["trainable"] < params["total"]
    assert [s["stage"] for s in params["by_stage"]] == ["base", "lora"]
    assert summary["train_samples_per_second"] > 0 and summary["wall_seconds"] >= summary["train_seconds"]
    assert summary["memory"]["peak_rss_mib"] > 0
    assert summary["padding_efficiency"] > 0.7  # length-grouped; about 0.5 for random batches of 2..24 words
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_logs] == list(range(2, 25, 2))
    assert [r["step"] for r in evals] == [5, 10, 15, 20, 24]
    assert evals[-1]["accuracy"] == summary["eval"]["accuracy"]
    assert json.loads((run_dir / ".adapt-run.json").read_text())["status"] == "finished"
    version = summary["versions"]["adapt"]
    assert summary["plugins"]["lora"] == {
        "kind": "method",
        "distribution": "adapt-peft",
        "version": version,
        "origin": "built-in",
    }
    # every eval (5, 10, 15, 20) and both epoch ends; LoRA and the head only, then deleted once the run finished
    assert summary["checkpoints"]["count"] == 6 and 0 < summary["checkpoints"]["bytes"] < 200_000
    resolved = (run_dir / "recipe.toml").read_text()
    assert "[methods.lora]" in resolved and "dropout = 0.0" in resolved  # defaults written out
    err = capsys.readouterr().err
    assert "eval accuracy" in err and "trainable parameters" in err  # the summary table
    # written through temporary files, yet with the user's umask (022 here), not mkstemp's 0600 / mkdtemp's 0700
    assert oct((run_dir / "summary.json").stat().st_mode & 0o777) == "0o644"
    assert oct((run_dir / "adapter").stat().st_mode & 0o777) == "0o755"
    assert oct((run_dir / "adapter" / "adapter_model.safetensors").stat().st_mode & 0o777) == "0o644"


def test_lora_trains_adapters_and_head_and_freezes_the_rest(train_tiny):
    run, before, summary = train_tiny()
    changed, frozen = [], []
    for name, param in run.unwrapped_model.named_parameters():
        (changed if not torch.equal(param, before[name]) else frozen).append(name)
        if "lora_" in name or "modules_to_save" in name:
            assert param.requires_grad, name
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert not param.requires_grad, name
            assert torch.equal(param, before[name]), f"frozen {name} changed"
    assert any("classifier" in n for n in changed) and any("lora_B" in n for n in changed)
    assert any("embeddings" in n for n in frozen)


def test_adapter_reloads_with_plain_peft_and_gives_the_same_logits(train_tiny, sample_batch, tiny_bert_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run, _, _ = train_tiny()
    batch = sample_batch(run.tokenizer)
    trained = run.unwrapped_model.eval()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    with torch.inference_mode():
        expected = trained(**batch).logits
        # adapt trims the top block (task.trim_top_block), plain PEFT does not: equal up to rounding
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=1e-5, atol=1e-6)


def test_restore_model_through_the_load_artifacts_hook(train_tiny, restore_tiny, sample_batch, tmp_path):
    run, _, _ = train_tiny()
    batch = sample_batch(run.tokenizer)
    restored = restore_tiny(tmp_path / "run")
    with torch.inference_mode():
        assert torch.equal(restored.model.eval()(**batch).logits, run.unwrapped_model.eval()(**batch).logits)


def test_check_prints_parameters_per_method(tiny_recipe, capsys):
    assert main(["check", str(tiny_recipe())]) == 0
    out = capsys.readouterr().out
    assert "192 train rows, 64 eval rows" in out
    assert "│ base" in out and "│ lora" in out


def test_grad_accumulation_counts_optimizer_steps(tiny_recipe, tmp_path):
    assert main(["run", str(tiny_recipe(train={"grad_accum_steps": 3, "epochs": 1, "log_every": 1}))]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["train_samples"] == 192  # 12 micro-batches / 3


def test_max_steps_and_bf16_autocast(tiny_recipe, tmp_path):
    assert main(["run", str(tiny_recipe(train={"max_steps": 3, "precision": "bf16"}))]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["precision"] == "bf16"


def test_same_recipe_runs_data_parallel_on_two_processes(tiny_recipe, tiny_bert_dir, toy_data, tmp_path, adapt_cli):
    """torchrun + Accelerate (gloo on CPU): each process takes half the batches; the eval metrics count
    every example once although 3 eval batches do not split evenly over 2 processes."""
    import os
    import sys

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = adapt_cli(
        "run",
        str(tiny_recipe(data={"max_eval_samples": 40}, train={"eval_batch_size": 16})),
        env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"},
        launcher=(torchrun, "--nproc_per_node", "2", "--master_port", "29531"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["steps"] == 12 and summary["train_samples"] == 384  # 2 epochs of 192 rows, 2 x 16 per step
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [12]  # written once, by the main process
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    # The same numbers from the saved adapter on one process.
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [line.split("\t") for line in toy_data["eval"].read_text().splitlines()[1:41]]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    with torch.inference_mode():
        logits = model(**tokenizer([r[0] for r in rows], padding=True, return_tensors="pt")).logits
    labels = torch.tensor([int(r[1]) for r in rows])
    assert summary["eval"]["accuracy"] == (logits.argmax(-1) == labels).float().mean().item()
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(summary["eval"]["loss"] - expected_loss) < 1e-5


def test_eval_recomputes_a_finished_runs_metrics(tiny_recipe, tmp_path, capsys):
    assert main(["run", str(tiny_recipe())]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary["eval"]
    assert main(["eval", str(tmp_path / "run"), "--json", "--set", "data.max_eval_samples=10"]) == 0
    assert json.loads(capsys.readouterr().out) != summary["eval"]
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 1
    assert "holds no recipe.toml" in capsys.readouterr().err


def test_dora_trains_magnitudes_and_directions_and_reloads_with_plain_peft(
    train_tiny, sample_batch, tiny_bert_dir, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    dora = {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "use_dora": True}
    run, before, _ = train_tiny(methods={"lora": dora})
    model = run.unwrapped_model
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any("lora_magnitude_vector" in n for n in changed) and any("lora_B" in n for n in changed)
    assert not [n for n in changed if not any(k in n for k in ("lora_", "classifier"))]  # the base did not move
    batch = sample_batch(run.tokenizer)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    assert reloaded.peft_config["default"].use_dora
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(**batch).logits, model.eval()(**batch).logits, rtol=1e-5, atol=1e-6)
