"""The plugin author's guide holds: the hook reference is generated from hookspecs.py, every hook is documented, the
lifecycle it shows per command is the order the commands really call the hooks in, every hook is called by a test
(here), and every public field of Run, PluginInfo and Table is in the guide's reference."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

from adapt import Head, PluginInfo, Run, Table, hookspecs
from adapt.plugin.hookdoc import hook_names, render

DOCS = Path(__file__).parent.parent / "docs"
GUIDE = DOCS / "plugins.md"


def test_hook_reference_is_generated_from_hookspecs():
    assert (DOCS / "hooks.md").read_text() == render(), (
        "docs/hooks.md is stale: python -m adapt.plugin.hookdoc > docs/hooks.md"
    )


def test_every_hook_has_a_docstring_a_reference_entry_and_a_place_in_the_lifecycle():
    reference = (DOCS / "hooks.md").read_text()
    in_lifecycle = {hook for hooks in documented_lifecycles().values() for hook in hooks}
    for name in hook_names():
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert f"## `{name}(" in reference, f"{name} has no entry in docs/hooks.md"
        assert name in in_lifecycle, f"{name} is in no lifecycle of docs/plugins.md"


def _public(cls) -> list[str]:
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    names += [n for n, v in vars(cls).items() if isinstance(v, property) or inspect.isfunction(v)]
    return sorted({n for n in names if not n.startswith("_")})


@pytest.mark.parametrize("cls", [Run, PluginInfo, Head])
def test_every_public_field_is_in_the_guide_reference(cls):
    guide = GUIDE.read_text()
    missing = [n for n in _public(cls) if f"`{n}`" not in guide and f"`{n}(" not in guide]
    assert not missing, f"{cls.__name__} fields not in docs/plugins.md: {missing}"
    assert "`Table`" in guide and "model_config" in inspect.getsource(Table)


# --- the lifecycle: which hooks each command calls, in the order of their first call ------------------------------


def documented_lifecycles() -> dict[str, list[str]]:
    """The guide's ```hooks COMMAND blocks: one hook per line, comments after it."""
    blocks = re.findall(r"```hooks ([\w-]+)\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return {command: [line.split()[0] for line in body.splitlines() if line.strip()] for command, body in blocks}


class Spy:
    """A method plugin implementing every hook, recording its calls and answering None (so the real plugins answer).
    One instance per plugin manager: the memory plan's instance is told apart by `run.planning`."""

    instances: list[Spy] = []

    def __init__(self):
        self.calls: list[str] = []
        self.planning = False
        Spy.instances.append(self)

    def record(self, hook: str, arguments: dict) -> None:
        run = arguments.get("run")
        if run is not None and run.planning:
            self.planning = True
        self.calls.append(hook)

    def adapt_plugin_info(self):
        self.calls.append("adapt_plugin_info")
        return PluginInfo(kind="method", summary="records every hook call")

    def adapt_checkpoint_state(self, run):  # a state, so that a resume gives it back
        self.record("adapt_checkpoint_state", {"run": run})
        return {"calls": len(self.calls)}


def _recorder(hook: str):
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    namespace: dict = {}
    exec(f"def {hook}(self, {params}):\n    self.record({hook!r}, locals())", namespace)  # the spec's own signature
    return namespace[hook]


for _hook in hook_names():
    if _hook not in vars(Spy):
        setattr(Spy, _hook, _recorder(_hook))


def first_calls(spies: list[Spy], planning: bool = False) -> list[str]:
    calls = [c for spy in spies if spy.planning == planning for c in spy.calls]
    return list(dict.fromkeys(calls))


class StopAtStep:
    def __init__(self, step: int):
        self.step = step

    def adapt_on_step_end(self, run):
        if run.step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_bert_dir, toy_data):
    """Each command run in this process with the spy as a method beside LoRA: {command: hooks in first-call order}."""
    from adapt.commands.cli import main
    from adapt.plugin import manager
    from adapt.testing import tiny_recipe_dict, write_recipe

    folder = tmp_path_factory.mktemp("lifecycle")
    recipe = tiny_recipe_dict(tiny_bert_dir, toy_data, folder / "run")
    recipe["methods"]["spy"] = {}
    recipe["train"].update(epochs=2, eval_every=8, checkpoint_every=4)
    path = write_recipe(folder / "recipe.toml", recipe)
    whole = write_recipe(folder / "whole.toml", {**recipe, "output": {"dir": str(folder / "whole")}})
    discover = manager.Catalogue.discover.__func__
    extra: dict = {}
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    mp.setattr(manager.Catalogue, "discover", classmethod(lambda cls, e=None: discover(cls, {**extra, **(e or {})})))
    traces = {}

    def trace(command: str, argv: list[str], expect: int = 0, **plugins) -> None:
        Spy.instances = []
        extra.clear()
        extra.update(spy=Spy, **plugins)
        assert main(argv) == expect, command
        # `run` makes its memory plan on instances of their own, as `plan` does: shown once, under `plan`
        planned = first_calls(Spy.instances, planning=True) if command == "plan" else []
        traces[command] = list(dict.fromkeys(first_calls(Spy.instances) + planned))

    try:
        trace("check", ["check", str(path)])
        trace("plan", ["plan", str(path)])
        trace("run", ["run", str(whole)])
        trace("interrupted", ["run", str(path)], expect=130, stop=StopAtStep(6))
        trace("resume", ["run", str(path), "--resume"])
        trace("eval", ["eval", str(folder / "run"), "--json"])
        trace("predict", ["predict", str(folder / "run"), "--json", "w1 good"])
        trace("export", ["export", str(folder / "run"), str(folder / "exported"), "--merge"])
    finally:
        mp.undo()
    return traces


def test_the_guide_shows_the_order_each_command_calls_the_hooks_in(traces):
    documented = documented_lifecycles()
    assert set(documented) == set(traces)
    for command, calls in traces.items():
        assert documented[command] == calls, f"{command}: the command calls\n{json.dumps(calls, indent=1)}"


def test_every_hook_is_called_by_some_command(traces):
    called = {hook for calls in traces.values() for hook in calls}
    assert called == set(hook_names()), f"never called: {sorted(set(hook_names()) - called)}"


def test_the_guides_testing_example_runs(run_recipe, tiny_recipe, monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    section = GUIDE.read_text().split("## Testing a plugin", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0](run_recipe, tiny_recipe)


def test_recipe_key_reference_is_generated_from_the_recipe_tables():
    from adapt.plugin.recipedoc import render as render_keys

    assert (DOCS / "recipe-keys.md").read_text() == render_keys(), (
        "docs/recipe-keys.md is stale: python -m adapt.plugin.recipedoc > docs/recipe-keys.md"
    )


def test_every_docs_page_is_in_the_site_navigation():
    import yaml

    config = yaml.safe_load((DOCS.parent / "mkdocs.yml").read_text())

    def pages(nav) -> set[str]:
        found = set()
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                found |= pages(value) if isinstance(value, list) else {value}
        return found

    assert pages(config["nav"]) == {p.name for p in DOCS.glob("*.md")}
