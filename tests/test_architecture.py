"""The house rules that keep the code base navigable, checked on the source (docs/architecture.md explains them)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "adapt"
PLUGINS = ROOT / "plugins"
MAX_MODULE_LINES = 420  # "about 400": a module past it does more than one job


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an import statement names (module level, in functions and under TYPE_CHECKING alike), with
    `from a import b` also as `a.b`, since b may be a module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def core_import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for _, t in _imported_names(ast.parse(path.read_text())) if t in modules}
        graph[name] = targets - {name, "adapt"}  # the facade re-exports lazily, by name
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_core_import_graph_has_no_cycle():
    graph = core_import_graph()
    assert len(graph) > 40 and "adapt.train.loop" in graph  # the graph really is the core's
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in core/adapt: " + " -> ".join(cycle or [])


def test_no_core_module_is_over_about_400_lines():
    long = {_module_name(p): n for p in CORE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these by job (docs/architecture.md): {long}"


def test_the_core_is_grouped_into_subpackages_with_only_the_public_api_at_the_top():
    top = sorted(p.stem for p in CORE.glob("*.py"))
    assert top == ["__init__", "__main__", "errors", "hookspecs", "io", "testing", "types"]
    for package in (p for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        init = package / "__init__.py"
        assert init.is_file(), package
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init}: say what this room holds"


def test_the_training_loop_names_no_speed_up():
    """Speed-ups come through adapt.speed.seam; the loop and its orchestration import nothing else of adapt.speed."""
    for module in ("loop", "orchestration"):
        imported = {t for _, t in _imported_names(ast.parse((CORE / "train" / f"{module}.py").read_text()))}
        speed = {t for t in imported if t.startswith("adapt.speed.") and not t.startswith("adapt.speed.seam")}
        assert not speed, f"adapt.train.{module} imports speed-ups by name: {sorted(speed)}"


def plugin_import_problems(plugin_dir: Path) -> list[str]:
    """What a plugin package imports of adapt beyond the facade's public names, or of another built-in plugin."""
    import adapt

    problems = []
    for path in plugin_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "adapt":  # `from adapt import X`: X must be public API, not a module
                    names = [f"adapt.{a.name}" for a in node.names if a.name not in adapt.__all__] or ["adapt"]
            else:
                continue
            where = f"{path.relative_to(plugin_dir.parent)}:{node.lineno}"
            for name in names:
                root = name.partition(".")[0]
                if root == "adapt" and name != "adapt":
                    problems.append(f"{where} imports {name}, which is not adapt's public API")
                elif root.startswith("adapt_") and root != plugin_dir.name:
                    problems.append(f"{where} imports another plugin, {root}")
                elif root in ("core", "plugins"):
                    problems.append(f"{where} imports {root}, which is no module of the installed package")
    return problems


def test_the_plugin_import_rule_catches_a_private_import(tmp_path):
    bad = tmp_path / "adapt_bad"
    bad.mkdir()
    (bad / "__init__.py").write_text(
        "from adapt import Head, hookimpl, load_file\nfrom adapt.train.loop import TrainingLoop\nimport adapt_lora\n"
        "def f():\n    from adapt.run import context\n    from adapt import hookspecs\n    import adapt\n"
    )
    problems = plugin_import_problems(bad)
    assert len(problems) == 4, problems
    for name in ("adapt.train.loop", "adapt_lora", "adapt.run", "adapt.hookspecs"):
        assert any(name in p for p in problems), name


PLUGIN_PACKAGES = sorted([*PLUGINS.glob("adapt_*"), *ROOT.glob("examples/*/src/adapt_*")])


@pytest.mark.parametrize("plugin", PLUGIN_PACKAGES, ids=lambda p: p.name)
def test_a_built_in_or_example_plugin_imports_only_the_adapt_facade(plugin):
    problems = plugin_import_problems(plugin)
    assert not problems, "a built-in plugin imports only `adapt`, as a third party would:\n" + "\n".join(problems)


def test_every_built_in_plugin_is_registered_as_an_entry_point():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    registered = {value.split(":")[0] for value in project["project"]["entry-points"]["adapt"].values()}
    packages = {p.name for p in PLUGINS.iterdir() if (p / "__init__.py").is_file()}
    assert packages == registered


def test_nothing_installs_or_imports_core_or_plugins_as_a_module():
    assert "core" not in sys.modules and "plugins" not in sys.modules
    for path in CORE.rglob("*.py"):
        roots = {name.partition(".")[0] for _, name in _imported_names(ast.parse(path.read_text()))}
        assert not roots & {"core", "plugins"}, path
