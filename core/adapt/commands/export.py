"""`adapt export`: a finished run as a Hugging Face model folder, optionally merged into the base weights.

A merged export is checked before it is kept: the folder is loaded back and must give the same outputs
as the unmerged run on the first eval examples, within a tolerance on the largest absolute logit
difference (1e-3 unless a method raised `run.merge_tolerance`, or `--atol`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adapt.errors import AdaptError
from adapt.io import atomic_dir
from adapt.model.inference import example_logits
from adapt.plugin.hooks import Hooks
from adapt.plugin.manager import Catalogue
from adapt.run.context import Run
from adapt.run.restore import open_run

CHECK_EXAMPLES = 64


def compare(reference: list[torch.Tensor], exported: list[torch.Tensor]) -> dict[str, Any]:
    """Largest absolute logit difference and how often the top prediction (last dimension) agrees."""
    diff = max(float((a - b).abs().max()) for a, b in zip(reference, exported, strict=True))
    same = [bool((a.argmax(-1) == b.argmax(-1)).all()) for a, b in zip(reference, exported, strict=True)]
    return {"examples": len(reference), "max_abs_logit_diff": diff, "top1_agreement": sum(same) / len(same)}


def export_run(
    run_dir: Path,
    out: Path,
    catalogue: Catalogue,
    merge: bool = False,
    atol: float | None = None,
    overrides: Sequence[str] = (),
    check_examples: int = CHECK_EXAMPLES,
    trust_preprocess: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Write the run in `run_dir` to `out` (atomically); returns what `adapt_export.json` records.

    `atol`: the largest logit difference a merged export may show; by default `run.merge_tolerance`
    (1e-3, or what a method raised it to)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdaptError(f"OUT: '{out}' already exists and is not an empty folder; choose a new folder")
    splits = "eval" if merge else None
    run, hooks = open_run(
        run_dir, catalogue, overrides, splits=splits,
        trust_preprocess=trust_preprocess,
        trust_remote_code=trust_remote_code,
    )
    features, collate, reference = _reference(run, hooks, check_examples) if merge else (None, None, None)
    for method in run.recipe.methods:
        hooks.export_model(run=run, merge=merge, plugin=method)
    model = run.unwrapped_model
    record: dict[str, Any] = {
        "run": str(run_dir),
        "merged": merge,
        "head": run.recipe.head,
        "methods": run.recipe.methods,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)
        if merge:
            record["check"] = _check(
                run, tmp, features, collate, reference, run.merge_tolerance if atol is None else atol, _pick(run, hooks)
            )
        (tmp / "adapt_export.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _reference(run: Run, hooks: Hooks, examples: int):
    encoded = hooks.encode(run=run, dataset=run.dataset).with_format(None)["eval"]
    features = encoded.select(range(min(examples, len(encoded)))).to_list()
    collate = hooks.make_collator(run=run)
    return features, collate, example_logits(run, features, collate, _pick(run, hooks))


def _pick(run: Run, hooks: Hooks):
    """The head's prediction tensor of a batch's outputs (adapt_prediction_tensor): what the check compares."""
    return lambda outputs: hooks.prediction_tensor(run=run, outputs=outputs)


def _check(run: Run, folder: Path, features, collate, reference, atol: float, pick) -> dict[str, Any]:
    from transformers import PreTrainedModel

    merged = run.unwrapped_model
    if not isinstance(merged, PreTrainedModel):
        raise AdaptError(
            f"--merge: after merging, the model is a {type(merged).__name__}, not a transformers model; "
            f"one of the methods ({', '.join(run.recipe.methods)}) does not merge"
        )
    run.model = type(merged).from_pretrained(folder).to(run.accelerator.device)
    result = {**compare(reference, example_logits(run, features, collate, pick)), "atol": atol}
    if result["max_abs_logit_diff"] > atol:
        raise AdaptError(
            f"--merge: the exported model's logits differ from the run's by up to {result['max_abs_logit_diff']:.3g} "
            f"(tolerance {atol:g}, --atol) on {result['examples']} eval examples; nothing was written"
        )
    return result
