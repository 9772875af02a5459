"""The example third-party packages in examples/ and the packages `adapt new-plugin` writes: each is pip-installed
from its own pyproject.toml and passes its own tests, written with adapt.testing (recipes that name the plugin)."""

from __future__ import annotations

from pathlib import Path

from adapt.commands.cli import main

EXAMPLES = Path(__file__).parent.parent / "examples"
KINDS = ["method", "head", "infrastructure"]


def test_example_packages_install_and_pass_their_own_tests(passes_own_tests):
    packages = sorted(p for p in EXAMPLES.iterdir() if (p / "pyproject.toml").is_file())
    assert [p.name for p in packages] == ["adapt-anchor", "adapt-csv-log"]
    assert passes_own_tests(*packages) == {"test_anchor.py": 2, "test_csv_log.py": 2}


def test_new_plugin_writes_packages_that_pass_their_own_tests(tmp_path, passes_own_tests, capsys):
    for kind in KINDS:
        assert main(["new-plugin", f"my-{kind}", "--kind", kind, "--dir", str(tmp_path / "new")]) == 0
        assert "pip install -e '.[test]' && pytest" in capsys.readouterr().out
    package = tmp_path / "new" / "adapt-my-head"
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()) == [
        "README.md",
        "pyproject.toml",
        "src/adapt_my_head/__init__.py",
        "tests/test_adapt_my_head.py",
    ]
    passed = passes_own_tests(*(tmp_path / "new" / f"adapt-my-{kind}" for kind in KINDS))
    assert passed == {"test_adapt_my_method.py": 2, "test_adapt_my_head.py": 1, "test_adapt_my_infrastructure.py": 2}


def test_new_plugin_refuses_bad_names_and_existing_folders_writing_nothing(tmp_path, capsys):
    assert main(["new-plugin", "Bad_Name", "--kind", "method", "--dir", str(tmp_path)]) == 2
    assert "use lower-case letters, digits and single hyphens" in capsys.readouterr().err
    assert main(["new-plugin", "lora", "--kind", "method", "--dir", str(tmp_path)]) == 2
    assert "an installed plugin already has this name" in capsys.readouterr().err
    (tmp_path / "adapt-taken").mkdir()
    assert main(["new-plugin", "taken", "--kind", "head", "--dir", str(tmp_path)]) == 2
    assert "already exists; nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapt-taken"]
    unwritable = tmp_path / "not-a-folder"
    unwritable.write_text("a file where the parent folder should be")
    assert main(["new-plugin", "fine", "--kind", "method", "--dir", str(unwritable)]) == 2
    assert f"--dir {unwritable}: cannot write the package there" in capsys.readouterr().err
