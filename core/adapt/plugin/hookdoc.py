"""The hook reference (docs/hooks.md), generated from hookspecs.py so that it cannot drift from the code.

`python -m adapt.plugin.hookdoc > docs/hooks.md` writes it again; a test fails when the file is stale.
"""

from __future__ import annotations

import inspect

from adapt import hookspecs

HEADER = """\
# Hook reference

Generated from `core/adapt/hookspecs.py` by
`python -m adapt.plugin.hookdoc > docs/hooks.md`;
do not edit by hand. Hooks are listed in the order a run calls them; [plugins.md](plugins.md#lifecycle) shows which
fire in each command. An implementation may accept any subset of a hook's parameters, by name.
"""


def hook_names() -> list[str]:
    """Every hook, in the order hookspecs.py defines them."""
    return [name for name, value in vars(hookspecs).items() if name.startswith("adapt_") and callable(value)]


def _options(function) -> str:
    opts = getattr(function, "adapt_spec", {}) or {}
    return " · ".join(flag for flag in ("firstresult", "historic") if opts.get(flag))


def render() -> str:
    parts = [HEADER]
    parts.append(inspect.cleandoc(hookspecs.__doc__ or "") + "\n")
    for name in hook_names():
        function = getattr(hookspecs, name)
        signature = inspect.signature(function)
        params = ", ".join(signature.parameters)
        returns = signature.return_annotation
        flags = _options(function)
        parts.append(f"## `{name}({params})` → `{returns}`\n")
        if flags:
            parts.append(f"*{flags}*\n")
        parts.append(inspect.cleandoc(function.__doc__ or "(undocumented)") + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
