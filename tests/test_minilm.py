"""End to end on the real pretrained MiniLM and GLUE SST-2, resolved offline from the seeded HF cache.

Needs `python ../shared/offline/seed_hf_cache.py` (run by .ci/run); fails, rather than skips, without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RECIPE = Path(__file__).parents[1] / "recipes" / "lora-sst2.toml"
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_lora_on_minilm_learns_sst2_offline(tmp_path, adapt_cli):
    overrides = {
        "data.max_train_samples": "2000",
        "data.max_eval_samples": "400",
        "train.eval_every": "1000",
        "train.learning_rate": "2e-3",
        "output.dir": str(tmp_path / "run"),
    }
    args = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    result = adapt_cli("run", str(RECIPE), *args, env=OFFLINE)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert summary["train_samples"] == 2000
    assert summary["parameters"]["total"] > 22_000_000
    assert summary["eval"]["accuracy"] > 0.7, summary["eval"]  # chance is about 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.dataset=nobody/no-such-dataset",
            "data.dataset: 'nobody/no-such-dataset' is not in the local Hugging Face cache",
        ),
        (
            "model.name=nobody/no-such-model",
            "model.name: 'nobody/no-such-model' is not in the local Hugging Face cache",
        ),
        ("data.config=cola", "data.config: cannot load dataset 'nyu-mll/glue'"),
    ],
)
def test_missing_hub_entries_fail_fast_offline_naming_the_key(tmp_path, adapt_cli, override, message):
    result = adapt_cli("check", str(RECIPE), "--set", override, "--set", f"output.dir={tmp_path / 'run'}", env=OFFLINE)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
