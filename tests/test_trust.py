"""Trust boundaries: a run directory runs no code unasked, and nothing adapt writes in one follows a link out of it."""

from __future__ import annotations

import json
import shutil

import pytest

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import BertConfig


class EvilConfig(BertConfig):
    model_type = "bert"
"""


@pytest.fixture
def copied_run(train_tiny, tiny_bert_dir, tmp_path):
    """A finished run whose recipe, as a copied run directory might, loads a model folder that ships code."""
    run, _, _ = train_tiny()
    evil = tmp_path / "evil-model"
    shutil.copytree(tiny_bert_dir, evil)
    marker = tmp_path / "code-ran"
    (evil / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (evil / "config.json").write_text(json.dumps(config))
    recipe = run.output_dir / "recipe.toml"
    text = recipe.read_text().replace("trust_remote_code = false", "trust_remote_code = true")
    text = text.replace(f'name = "{tiny_bert_dir}"', f'name = "{evil}"')
    assert "trust_remote_code = true" in text and str(evil) in text
    recipe.write_text(text)
    return run.output_dir, marker


@pytest.mark.parametrize(
    "command",
    [["eval", "{run}"], ["predict", "{run}", "a text"], ["export", "{run}", "{out}"], ["run", "{run}", "--resume"]],
    ids=lambda c: c[0],
)
def test_a_run_directory_loads_no_remote_code_without_consent(copied_run, tmp_path, command, capsys):
    from adapt.commands.cli import main

    run_dir, marker = copied_run
    argv = [a.format(run=run_dir, out=tmp_path / "out") for a in command]
    assert main(argv) == 2
    assert not marker.exists()  # nothing of the model folder was imported
    assert "--trust-remote-code" in capsys.readouterr().err


def test_with_consent_the_model_s_own_code_is_loaded(copied_run):
    from adapt.commands.cli import main

    run_dir, marker = copied_run
    main(["eval", str(run_dir), "--trust-remote-code"])  # whatever the evil config then does, its code ran
    assert marker.read_text() == "ran"


def test_a_lock_file_that_is_a_link_is_replaced_not_followed(train_tiny, tmp_path, capsys):
    from adapt.commands.cli import main
    from adapt.run.rundir import LOCK, in_use

    run, _, _ = train_tiny()
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    lock = run.output_dir / LOCK
    lock.unlink(missing_ok=True)
    lock.symlink_to(outside)
    assert not in_use(run.output_dir)  # a link is no lock of a live run
    assert main(["run", str(run.output_dir), "--resume"]) == 0  # already finished: nothing to resume
    assert outside.read_text() == "keep me"
    assert lock.exists() and not lock.is_symlink()
