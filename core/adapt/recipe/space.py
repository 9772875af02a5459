"""A sweep's space file: which recipe keys vary and how (listed values, ranges, log-uniform ranges), what to
optimise, the sampler and the pruner. Validated all at once, like a recipe, before any trial runs."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from adapt.errors import RecipeError
from adapt.recipe.loader import _validation_problems, load_recipe, recipe_data, toml_key
from adapt.types import PluginInfo, Table

Scalar = bool | int | float | str


class Range(Table):
    """`{ low = 1e-5, high = 1e-3, log = true }`: integers when `low`, `high` (and `step`) are integers."""

    low: float | int
    high: float | int
    #: Sample uniformly in log space (learning rates, weight decay); needs low > 0.
    log: bool = False
    #: Only multiples of `step` above `low` (and what a grid sampler enumerates).
    step: float | int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a range is either log or stepped, not both")
        return self

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))

    def grid(self) -> list[float | int]:
        """The values a grid sampler tries: low, low + step, ... up to high."""
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [self.low + i * self.step if self.integer else round(self.low + i * self.step, 12) for i in range(count)]


class Pruner(Table):
    """Optuna's pruners, fed the objective metric of every evaluation during training (`train.eval_every`)."""

    kind: Literal["none", "median", "percentile", "successive-halving", "hyperband", "threshold"] = "median"
    #: median / percentile: trials that finish before any is pruned; threshold / median / percentile:
    #: optimizer steps before the first pruning decision.
    startup_trials: int = Field(default=3, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    percentile: float = Field(default=50.0, gt=0, lt=100)
    #: threshold: prune a trial whose metric falls below `lower` or rises above `upper`.
    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Pruner:
        if self.kind == "threshold" and self.lower is None and self.upper is None:
            raise ValueError("the threshold pruner needs lower, upper or both")
        return self

    def build(self) -> Any:
        import optuna.pruners as p

        startup, warmup = self.startup_trials, self.warmup_steps
        return {
            "none": lambda: p.NopPruner(),
            "median": lambda: p.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup),
            "percentile": lambda: p.PercentilePruner(self.percentile, n_startup_trials=startup, n_warmup_steps=warmup),
            "successive-halving": lambda: p.SuccessiveHalvingPruner(),
            "hyperband": lambda: p.HyperbandPruner(),
            "threshold": lambda: p.ThresholdPruner(lower=self.lower, upper=self.upper, n_warmup_steps=warmup),
        }[self.kind]()


class Space(Table):
    #: The eval metric to optimise, as the head reports it ("accuracy", "f1", "spearman", "perplexity").
    metric: str = Field(min_length=1)
    #: Default: minimise metrics named like a loss or perplexity, maximise the others.
    direction: Literal["maximize", "minimize"] | None = None
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    #: Trials the study runs in all (every worker counting); `--trials` overrides; a grid defaults to its size.
    trials: int | None = Field(default=None, ge=1)
    seed: int = 42
    pruner: Pruner = Pruner()
    #: Dotted recipe keys: a list of values (categorical), or a Range (checked by `param_specs`).
    params: dict[str, list[Scalar] | Range]

    @property
    def goal(self) -> Literal["maximize", "minimize"]:
        if self.direction is not None:
            return self.direction
        lowered = self.metric.lower()
        return "minimize" if any(w in lowered for w in ("loss", "perplexity", "error", "mse", "mae")) else "maximize"

    def grid(self) -> dict[str, list[Any]]:
        return {k: list(v) if isinstance(v, list) else v.grid() for k, v in self.params.items()}

    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid().values())

    def sampler_for(self, worker: int) -> Any:
        """Worker 0 draws with `seed`, so a study run by one process is reproducible; each further worker on
        the same study gets its own seed, or every worker would try the same first parameters."""
        import optuna.samplers as s

        seed = self.seed + 1000 * worker
        if self.sampler == "grid":
            return s.GridSampler(self.grid(), seed=seed)
        if self.sampler == "random":
            return s.RandomSampler(seed=seed)
        return s.TPESampler(seed=seed)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The trial's value for every key."""
        values = {}
        for key, spec in self.params.items():
            if isinstance(spec, list):
                values[key] = trial.suggest_categorical(key, spec)
            elif spec.integer:
                values[key] = trial.suggest_int(key, spec.low, spec.high, step=spec.step or 1, log=spec.log)
            else:
                values[key] = trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)
        return values


def load_space(
    path: str | Path, recipe_path: str, plugins: Mapping[str, PluginInfo], overrides: list[str], broken: Mapping
) -> Space:
    """Read and validate a space file, then try each key's extreme values on the recipe, so that a key the
    recipe does not have or a value it refuses is reported now, all at once, not in trial 5."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read the space file: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"not valid TOML: {exc}"]) from None
    problems = []
    params = param_specs(raw.pop("params", None), raw.get("sampler"), problems)
    space = None
    try:
        space = Space.model_validate({**raw, "params": params})
    except ValidationError as exc:
        problems = [p.removeprefix("space.") for p in _validation_problems("space", Space, exc)] + problems
    recipe = recipe_data(recipe_path, overrides, None, [])
    for key, spec in params.items():
        *tables, _ = key.split(".")
        if len(tables) > 1 and not _has_table(recipe, tables):
            where = ".".join(toml_key(t) for t in tables)
            problems.append(f"params.{toml_key(key)}: the recipe has no [{where}] table, so the key would add one")
            continue
        for value in spec if isinstance(spec, list) else (spec.low, spec.high):
            try:
                load_recipe(recipe_path, plugins, overrides, broken=broken, values={key: value})
            except RecipeError as exc:
                found = "; ".join(exc.problems)
                problems.append(f"params.{toml_key(key)} = {value!r}: the recipe refuses it: {found}")
                break
    if problems or space is None:
        raise RecipeError(str(path), problems, "the space file")
    return space


def param_specs(raw: Any, sampler: Any, problems: list[str]) -> dict[str, list[Scalar] | Range]:
    """The [params] table, each key checked on its own so that every problem names its key."""
    example = '"train.learning_rate" = { low = 1e-5, high = 1e-3, log = true }'
    if not isinstance(raw, dict) or not raw:
        problems.append(f"[params]: name at least one recipe key to vary, e.g. {example}")
        return {}
    specs: dict[str, list[Scalar] | Range] = {}
    for key, spec in raw.items():
        where = f"params.{toml_key(key)}"
        if isinstance(spec, list):
            odd = [v for v in spec if not isinstance(v, Scalar)]
            if not spec or odd:
                got = f", got {odd[0]!r}" if odd else ""
                problems.append(f"{where}: list one or more numbers, strings or booleans{got}")
                continue
            specs[key] = spec
        elif isinstance(spec, dict):
            try:
                specs[key] = Range.model_validate(spec)
            except ValidationError as exc:
                problems.extend(_validation_problems(where, Range, exc))
                continue
            if sampler == "grid" and specs[key].step is None:
                problems.append(f"{where}: the grid sampler needs listed values or a range with a step")
        else:
            problems.append(f"{where}: expected a list of values or a range like {{ low = 1, high = 8 }}, got {spec!r}")
    return specs


def _has_table(raw: dict[str, Any], tables: list[str]) -> bool:
    node: Any = raw
    for name in tables:
        if not isinstance(node, dict) or name not in node:
            return False
        node = node[name]
    return isinstance(node, dict)
