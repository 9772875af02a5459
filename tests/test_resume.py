"""Exact resume: a run killed with SIGKILL at a random step (a real subprocess, killed by a real signal) and
resumed with `adapt run --resume` ends with bit-identical trainable weights, identical eval metrics and the
same logged losses as the same recipe run without interruption."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch

from adapt.commands.cli import main

RNG = random.Random()  # a different kill point each run; the assertion messages name it


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


def trained_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every artifact a run saved (its checkpoints are gone once it finished)."""
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(run_dir.rglob("*.safetensors")):
        for name, value in load_file(str(file)).items():
            tensors[f"{file.relative_to(run_dir)}:{name}"] = value
    return tensors


def logged(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock throughput."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_second"} for r in records]


def assert_same_run(reference: Path, resumed: Path, where: str) -> None:
    expected, got = trained_tensors(reference), trained_tensors(resumed)
    assert expected and sorted(expected) == sorted(got), where
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"{where}: {len(different)} tensors differ, e.g. {different[:3]}"
    a, b = (json.loads((d / "summary.json").read_text()) for d in (reference, resumed))
    assert a["eval"] == b["eval"], where
    assert (a["steps"], a["train_samples"]) == (b["steps"], b["train_samples"]), where
    for plugin in ("gradual-unfreezing", "head-only"):
        assert a.get(plugin) == b.get(plugin), where
    assert logged(reference) == logged(resumed), where
    assert b["resumed_from"].startswith(str(resumed / "checkpoints" / "step-"))
    assert not (resumed / "checkpoints").exists()  # the run finished: its checkpoints are gone


LORA = {"lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "dropout": 0.1}}
CASES = {
    # name: (methods, train table, first and last step the kill may come after)
    "lora": (LORA, {}, (4, 22)),
    "adapters": ({"adapters": {"reduction_factor": 4}}, {}, (4, 22)),
    "head-only": ({"head-only": {}}, {"epochs": 3}, (4, 34)),  # cached features served from epoch 2 on
    "gradual-unfreezing": ({"gradual-unfreezing": {"unit": "step", "every": 4}}, {}, (5, 15)),
    "full": ({"full": {}}, {"learning_rate": 1e-3}, (4, 22)),
    "int8-lora": ({"int8": {}, **LORA}, {}, (4, 22)),
    "dora": ({"lora": {**LORA["lora"], "use_dora": True}}, {}, (4, 22)),
    "ia3": ({"peft": {"method": "ia3", "target_modules": ["key", "value"], "feedforward_modules": []}}, {}, (4, 22)),
    "prompt-tuning": ({"peft": {"method": "prompt_tuning", "num_virtual_tokens": 4}}, {}, (4, 22)),
    # the checkpoint carries the 8-bit optimizer state (and its quantisation scales)
    "full-adamw-8bit": (
        {"full": {}},
        {"learning_rate": 1e-3, "optimizer": "adamw-8bit", "optimizer_options": {"min_8bit_size": 1}},
        (4, 22),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_killed_run_resumes_exactly(case, tiny_recipe, tmp_path, adapt_with_crash):
    methods, train, (first, last) = CASES[case]
    step = RNG.randint(first, last)
    if case == "gradual-unfreezing":  # between two unfreezing steps (4, 8, 12, 16)
        step = RNG.choice([s for s in range(first, last + 1) if s % 4])
    recipe = str(tiny_recipe(methods=methods, train={"checkpoint_every": 3, "eval_every": 7, **train}))
    where = f"{case} killed after step {step}"

    assert main(["run", recipe, "--set", f"output.dir={json.dumps(str(tmp_path / 'reference'))}"]) == 0
    killed = adapt_with_crash("run", recipe, "--set", f"plugins.crash.step={step}")
    assert killed.returncode == -9, f"{where}: {killed.stderr[-2000:]}"
    run_dir = tmp_path / "run"
    assert not (run_dir / "summary.json").exists()
    assert 1 <= len(list((run_dir / "checkpoints").glob("step-*"))) <= 2  # train.keep_checkpoints = 2 pruned the rest
    resumed = adapt_with_crash("run", recipe, "--resume")
    assert resumed.returncode == 0, f"{where}: {resumed.stderr[-3000:]}"
    assert_same_run(tmp_path / "reference", run_dir, where)


def kill_resume_and_compare(recipe: str, crash: str, tmp_path: Path, adapt_with_crash, where: str) -> None:
    """A reference run in-process, the same run killed (-9) where `crash` says, resumed: bit for bit the reference."""
    assert main(["run", recipe, "--set", f"output.dir={json.dumps(str(tmp_path / 'reference'))}"]) == 0
    killed = adapt_with_crash("run", recipe, "--set", crash)
    assert killed.returncode == -9, f"{where}: {killed.stderr[-2000:]}"
    resumed = adapt_with_crash("run", recipe, "--resume")
    assert resumed.returncode == 0, f"{where}: {resumed.stderr[-3000:]}"
    assert_same_run(tmp_path / "reference", tmp_path / "run", where)


def test_killed_extractive_qa_run_resumes_exactly(tiny_recipe, toy_qa, tmp_path, adapt_with_crash):
    """Windows of one question spread over batches; the eval's per-question spans are merged like any metric."""
    step = RNG.randint(4, 20)
    recipe = str(tiny_recipe(
        data={"train_file": str(toy_qa["train"]), "eval_file": str(toy_qa["eval"])},
        task={"head": "extractive-qa", "doc_stride": 8, "allow_no_answer": True},
        methods=LORA,
        train={"epochs": 1, "checkpoint_every": 3, "eval_every": 7},
    ))
    kill_resume_and_compare(recipe, f"plugins.crash.step={step}", tmp_path, adapt_with_crash,
                            f"extractive-qa killed after step {step}")


def test_killed_between_micro_batches_resumes_exactly(tiny_recipe, tmp_path, adapt_with_crash):
    """grad_accum_steps = 2: killed after the first micro-batch of a step had gone backward."""
    step = RNG.randint(3, 11)
    recipe = str(tiny_recipe(train={"grad_accum_steps": 2, "checkpoint_every": 2}))
    kill_resume_and_compare(recipe, f"plugins.crash.micro_batch={2 * step}", tmp_path, adapt_with_crash,
                            f"killed during the second micro-batch of step {step}")


def test_two_processes_killed_and_resumed_with_two(tiny_recipe, tmp_path, adapt_with_crash):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")

    def launcher(port: int) -> tuple[str, ...]:
        return (torchrun, "--nproc_per_node", "2", "--master_port", str(port))

    step = RNG.randint(3, 10)
    recipe = str(tiny_recipe(train={"checkpoint_every": 2}))
    where = f"2 processes killed after step {step}"
    reference = adapt_with_crash(
        "run", recipe, "--set", f"output.dir={json.dumps(str(tmp_path / 'reference'))}", launcher=launcher(29541)
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = adapt_with_crash("run", recipe, "--set", f"plugins.crash.step={step}", launcher=launcher(29542))
    assert killed.returncode != 0, where
    resumed = adapt_with_crash("run", recipe, "--resume", launcher=launcher(29543))
    assert resumed.returncode == 0, f"{where}: {resumed.stderr[-3000:]}"
    assert_same_run(tmp_path / "reference", tmp_path / "run", where)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tiny_recipe, tmp_path, adapt_with_crash):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    recipe = str(tiny_recipe(train={"checkpoint_every": 100}))
    signalled = [
        "--set",
        "plugins.crash.step=5",
        "--set",
        'plugins.crash.signal="SIGTERM"',
        "--set",
        "plugins.crash.rank=0",
    ]
    stopped = adapt_with_crash(
        "run", recipe, *signalled, launcher=(torchrun, "--nproc_per_node", "2", "--master_port", "29544")
    )
    assert stopped.returncode != 0 and "stopped by SIGTERM after optimizer step 5" in stopped.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "step-5"
    assert sorted(p.name for p in checkpoint.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    resumed = adapt_with_crash(
        "run", recipe, "--resume", launcher=(torchrun, "--nproc_per_node", "2", "--master_port", "29545")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resumed_from"] == str(checkpoint)
