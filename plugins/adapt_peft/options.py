"""A PEFT method's options, checked against PEFT's own config dataclass before anything loads: an unknown option
gets a did-you-mean from the dataclass's fields, a wrong value the field's type, and what PEFT's `__post_init__`
refuses is refused here too."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from functools import cache
from typing import Any

#: Set by adapt from the run, not by the recipe.
DERIVED = {
    "task_type": "derived from the recipe's head",
    "peft_type": "the method itself",
    "inference_mode": "set by adapt (training, then loading for eval and predict)",
    "base_model_name_or_path": "model.name",
    "revision": "model.revision",
    "auto_mapping": "set by PEFT when it saves",
    "peft_version": "set by PEFT when it saves",
}
#: Methods this plugin does not run, and why.
NOT_HERE = {
    "lora": "LoRA has its own plugin with the fused layer and LoRA's initialisations: use [methods.lora]",
    "adalora": "AdaLoRA reallocates ranks from the gradients after every optimizer step, from a training loop of its "
    "own (update_and_allocate), whose state a checkpoint would have to carry: use [methods.lora] (init = 'eva' "
    "redistributes ranks once, from data)",
    "xlora": "X-LoRA mixes LoRA adapters trained before: it needs adapters, not a base model",
    "poly": "Poly routes by a task id per example, which adapt's batches do not carry",
    "multitask_prompt_tuning": "multitask prompt tuning needs a task id per example, which adapt's batches lack",
    "cpt": "CPT needs its own token type masks in every batch",
}


def peft_types() -> dict[str, type]:
    """PEFT's methods by the name a recipe uses (lower case: "ia3", "prompt_tuning", ...) -> their config class."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(getattr(key, "value", key)).lower(): cls for key, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def runnable_methods() -> dict[str, type]:
    return {name: cls for name, cls in sorted(peft_types().items()) if name not in NOT_HERE}


def method_name(text: str) -> str:
    return text.strip().lower().replace("-", "_").replace("³", "3")


def config_class_of(method: str) -> type:
    """The config class of a method the recipe's validation (`check_options`) already accepted."""
    return runnable_methods()[method_name(method)]


@cache
def _hints(config_class: type) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


def type_text(annotation: Any) -> str:
    """A field's type as PEFT's source spells it, without the module prefixes."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


def settable_fields(config_class: type) -> dict[str, dataclasses.Field]:
    """The dataclass fields a recipe may set."""
    return {f.name: f for f in dataclasses.fields(config_class) if f.init and f.name not in DERIVED}


def check_options(method: str, options: dict[str, Any]) -> type:
    """The config class of `method`, once every option is one of its fields with a value of its type; raises
    ValueError with what would be valid."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    name = method_name(method)
    if name in NOT_HERE:
        raise ValueError(f"method = {method!r}: {NOT_HERE[name]}")
    known = runnable_methods()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"method = {method!r} is not one of PEFT's methods: {hint}(PEFT has {', '.join(known)})")
    config_class = known[name]
    fields = settable_fields(config_class)
    for key, value in options.items():
        if key in DERIVED:
            raise ValueError(f"{key}: not a recipe option ({DERIVED[key]})")
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"{key}: not an option of {name} (PEFT's {config_class.__name__}): {hint}"
                f"its options are {', '.join(sorted(fields))}"
            )
        annotation = _hints(config_class)[key]
        try:
            adapter = TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True, strict=True))
            adapter.validate_python(value)
        except ValidationError:
            raise ValueError(f"{key}: expected {type_text(annotation)}, got {value!r}") from None
        except Exception:  # noqa: BLE001 - a type pydantic cannot check: PEFT's own checks below still run
            pass
    try:
        config_class(**options)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"PEFT's {config_class.__name__} refuses these options: {exc}") from None
    return config_class


def option_rows(config_class: type) -> list[dict[str, str]]:
    """The options of one method for `adapt plugins peft METHOD`: key, type, default and PEFT's help text."""
    import json

    rows = []
    for name, f in settable_fields(config_class).items():
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        shown = "unset" if default is None else json.dumps(default, default=str)
        help_text = " ".join(str(f.metadata.get("help", "")).split())
        rows.append(
            {"key": name, "type": type_text(_hints(config_class)[name]), "default": shown, "description": help_text}
        )
    return rows
