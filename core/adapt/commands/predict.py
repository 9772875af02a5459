"""`adapt predict`: raw rows in, the head's predictions out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapt.errors import AdaptError, UsageError
from adapt.loading.files import load_file, preprocess
from adapt.plugin.manager import Catalogue
from adapt.run.restore import open_run


def predict_run(
    run_dir: Path,
    texts: Sequence[str],
    file: str | None,
    catalogue: Catalogue,
    overrides: Sequence[str] = (),
    trust_preprocess: bool = False,
    trust_remote_code: bool = False,
    given_rows: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The head's predictions for each TEXT (a row {"text": TEXT}), then for each of `given_rows` (rows the command
    line spelt out, such as {"question": Q, "context": C}), then for each row of `file`, which has the columns of the
    recipe's data and goes through its `data.preprocess` like them."""
    if not texts and not given_rows and file is None:
        raise UsageError("predict: give one or more TEXT arguments, --question with --context, or --file FILE")
    run, hooks = open_run(
        run_dir, catalogue, overrides, splits=None,
        trust_preprocess=trust_preprocess,
        trust_remote_code=trust_remote_code,
    )
    rows: list[dict[str, Any]] = [{"text": text} for text in texts] + list(given_rows)
    if file is not None:
        data = run.recipe.data
        rows.extend(preprocess(load_file(file, "--file"), data.preprocess, data.preprocess_batched).to_list())
    predictions = hooks.predict(run=run, rows=rows)
    if len(predictions) != len(rows):
        raise AdaptError(f"the head '{run.recipe.head}' returned {len(predictions)} predictions for {len(rows)} rows")
    return predictions
