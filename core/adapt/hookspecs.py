"""Every hook a plugin can implement, in the order a run calls them.

Conventions (the same as pytest's):
- every hook name starts with ``adapt_``; the core passes arguments by keyword only, so an
  implementation may accept any subset of a hook's parameters;
- "provide X" hooks are ``firstresult``: the first non-None answer wins and the others are not called.
  The core registers fallbacks for some of them (``adapt.plugin.defaults``) with ``trylast``, so a plugin only
  implements what it wants to change;
- observers (``adapt_on_*``) return None;
- contribution hooks (``adapt_model_load_kwargs``, ``adapt_loss_terms``, ``adapt_summary``) collect the
  answers of every plugin;
- only configure-time hooks are ``historic``, so a plugin registered late still sees the configuration;
- the hook API has a version (``adapt.HOOK_API``, now 1.3), which a plugin can require through
  ``PluginInfo.requires_api``.

Which plugins take part: method and head plugins only when the recipe names them, infrastructure
plugins always (unless listed in ``plugins.disable``). Method hooks that act on the model
(``adapt_transform_model``, ``adapt_load_artifacts``, ``adapt_export_model``) are called on one method at
a time, in the composition order, so methods never need to know about each other.

A finished run is loaded back (``adapt eval``, ``predict``, ``export``) with ``adapt_restore_state``, the
head's model hooks, ``adapt_on_model_loaded`` and ``adapt_load_artifacts`` in place of
``adapt_transform_model``; no training data is needed for that.

A memory plan (``adapt plan``, and the estimate ``adapt run`` prints before loading weights) calls the head's
and the methods' hooks (never infrastructure plugins'), on new plugin instances, with ``run.planning`` True:
``adapt_configure``, ``adapt_head_modules``, ``adapt_model_load_kwargs``, ``adapt_load_model`` (where
``adapt.from_pretrained_cached``, through which ``adapt.Head`` loads, builds the model on the meta device from
its config), ``adapt_on_model_loaded``, ``adapt_transform_model``, ``adapt_make_collator``,
``adapt_compute_loss`` and ``adapt_loss_terms`` (on meta tensors). ``run.dataset`` may be None there (no data
at hand). Skip what needs real tensors or the device (a kernel probe, a cache) when ``run.planning`` is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from datasets import DatasetDict

    from adapt.recipe.loader import Recipe
    from adapt.run.context import Run
    from adapt.types import Metrics, PluginInfo

#: The hook API's version, "MAJOR.MINOR": MINOR grows when a hook, a parameter or a PluginInfo field is added
#: (1.1: ``adapt_on_model_loaded``; 1.2: capabilities, ``PluginInfo.provides/needs/runs_after/opt_in``,
#: ``adapt_prediction_tensor``, with ``after`` and ``needs_one_of`` deprecated until 2.0; 1.3: ``Run.training_batches``,
#: ``PluginInfo.variants``), MAJOR when one changes
#: meaning or goes. A plugin states the version it needs in ``PluginInfo.requires_api``; it is refused, with both
#: versions named, unless MAJOR is the same and MINOR at least as high.
HOOK_API = "1.3"

hookspec = pluggy.HookspecMarker("adapt")
#: Marks a plugin's hook implementations (`from adapt import hookimpl`).
hookimpl = pluggy.HookimplMarker("adapt")


# --- discovery and configuration -------------------------------------------------------------------


@hookspec(firstresult=True)
def adapt_plugin_info() -> PluginInfo:
    """Describe this plugin: its kind, its recipe table, and how it composes with other methods.

    Called once per plugin when plugins are discovered, before any recipe is read, and asked of each
    plugin on its own. ``firstresult`` because each plugin answers only for itself. A plugin that does
    not implement it is an always-on infrastructure plugin without options.

    :return: a :class:`adapt.PluginInfo`.
    """


@hookspec(historic=True)
def adapt_configure(recipe: Recipe) -> None:
    """The recipe has been validated; nothing heavy has been loaded yet.

    ``historic`` so that a plugin registered after the call (for instance by another plugin) is
    configured too.

    :param recipe: the validated recipe; ``recipe.table(name)`` gives a plugin's own table.
    """


# --- building the model and the data ----------------------------------------------------------------


@hookspec(firstresult=True)
def adapt_head_modules(run: Run) -> list[str] | None:
    """Name the top-level modules the head will create fresh (``["classifier"]``), before the model loads.

    Called once, before ``adapt_model_load_kwargs``; the head implements it (``adapt.Head`` does, building the
    model on the meta device to find them). The core stores the answer in
    ``run.head_modules``, so a quantisation plugin can leave the head in full precision. ``firstresult``:
    the head answers for itself.

    :return: module names, or None when unknown.
    """


@hookspec
def adapt_model_load_kwargs(run: Run) -> dict[str, Any] | None:
    """Contribute keyword arguments to the head's ``from_pretrained`` call (``quantization_config``,
    ``device_map``, ``attn_implementation``...).

    Called once, before ``adapt_load_model``. Not ``firstresult``: the answers of every plugin are
    merged, and two plugins setting the same key to different values is an error naming the key.

    :param run: the run; ``run.tokenizer`` and ``run.dataset`` are loaded.
    :return: a dict of keyword arguments, or None to contribute nothing.
    """


@hookspec(firstresult=True)
def adapt_load_model(run: Run, load_kwargs: dict[str, Any]) -> torch.nn.Module | None:
    """Build the task model: the pretrained backbone named by ``[model]`` plus the head.

    Called once, implemented by the recipe's head. The head also sets ``run.task_type`` and, from the
    loaded model, confirms ``run.head_modules`` (the modules it created fresh, which every method keeps
    trainable).
    ``firstresult``: exactly one plugin builds the model.

    :param run: the run; ``run.dataset`` holds the raw splits (to read label names from).
    :param load_kwargs: merged answers of ``adapt_model_load_kwargs``; pass them to ``from_pretrained``.
    :return: the model.
    """


@hookspec
def adapt_on_model_loaded(run: Run) -> None:
    """The head's model is loaded and no method has been applied to it yet.

    Called once per model build, right after ``adapt_load_model``, before the first ``adapt_transform_model``
    (or, when a finished run is restored for ``eval``/``predict``/``export``, before the first
    ``adapt_load_artifacts``). The core freezes nothing: every parameter still requires grad, except those
    the loading itself made untrainable (quantised weights). Record what must be known about the pretrained
    model before methods change it (the weights a regulariser pulls back toward); ``run.parameter_origin``,
    ``run.pretrained_parameters()`` and ``run.head_parameters()`` work from here on, whatever wraps the model
    later. In ``adapt plan`` (``run.planning``) the model is on the meta device: skip work on real tensors.

    :param run: the run; ``run.model`` is the head's model, ``run.head_modules`` confirmed.
    """


@hookspec
def adapt_transform_model(run: Run) -> None:
    """Adapt the model: wrap it, freeze parameters, inject modules.

    Called once per method plugin named in the recipe, one method at a time, in composition order
    (a method after those that provide what its
    ``PluginInfo.runs_after`` names, else recipe order), after ``adapt_load_model``. Implementations
    replace or modify ``run.model`` in place and return None.

    :param run: the run; ``run.model`` is the model as left by the previous method.
    """


@hookspec(firstresult=True)
def adapt_encode(run: Run, dataset: DatasetDict) -> DatasetDict | None:
    """Turn the raw splits into model features (``input_ids``, ``attention_mask``, ``labels``...).

    Called once before training, implemented by the head. Features must not be padded: batches are
    padded dynamically by the collator. Unknown or missing columns should raise an error naming the
    recipe key that names the column.

    :param run: the run; ``run.tokenizer`` is loaded.
    :param dataset: the raw splits "train" and "eval".
    :return: the encoded splits, with only columns the collator understands.
    """


@hookspec(firstresult=True)
def adapt_make_collator(run: Run) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None:
    """Provide the function that pads a list of encoded examples into a batch.

    Called once before training; the head implements it. ``firstresult`` so that a plugin can
    replace the head's collator (``tryfirst``).

    :return: a picklable callable (it may run in DataLoader workers).
    """


@hookspec(firstresult=True)
def adapt_param_groups(run: Run) -> list[dict[str, Any]] | None:
    """Provide the optimizer's parameter groups.

    Called once after all methods were applied. The core's fallback puts the trainable parameters into
    two groups, with and without weight decay (biases and norms). A plugin implementing discriminative
    learning rates returns its own groups; a group's ``"lr"`` overrides ``train.learning_rate`` and extra
    keys (such as ``"name"``) are kept for plugins to find their groups again.

    :param run: the run; ``run.model`` is final.
    :return: a list of ``torch.optim`` parameter-group dicts.
    """


@hookspec(firstresult=True)
def adapt_make_optimizer(run: Run, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer | None:
    """Build the optimizer from the parameter groups (``adapt_param_groups``' answer).

    Called once, after ``adapt_param_groups``, before Accelerate prepares model and optimizer. The core's
    fallback builds ``train.optimizer`` (adamw, adamw-8bit, paged-adamw-8bit, adafactor, sgd) with
    ``[train.optimizer_options]``, ``train.learning_rate`` and ``train.weight_decay``. A plugin offering another
    optimizer returns it (taking its options from its own table); ``firstresult``, so its answer wins. Its
    ``state_dict`` must load with ``torch.load(weights_only=True)``, since checkpoints carry it.

    :param param_groups: ``torch.optim`` parameter groups; a group's ``"lr"`` overrides the recipe's.
    :return: a ``torch.optim.Optimizer``.
    """


@hookspec(firstresult=True)
def adapt_make_metrics(run: Run) -> Metrics | None:
    """Provide a fresh :class:`adapt.Metrics` accumulator for one evaluation pass.

    Called at the start of every evaluation; the head implements it.
    """


# --- the training loop --------------------------------------------------------------------------------


@hookspec
def adapt_on_train_start(run: Run) -> None:
    """Training is about to start: model, optimizer and data loaders are prepared, and
    ``run.max_steps`` holds the number of optimizer steps. On a resumed run (``run.resumed_from`` set),
    ``run.step`` is where training continues and plugin states are already loaded."""


@hookspec
def adapt_on_epoch_start(run: Run, epoch: int) -> None:
    """An epoch is starting. ``epoch`` counts from 0; ``run.step`` is the optimizer step so far. A run
    resumed in the middle of an epoch does not call it again for that epoch."""


@hookspec(firstresult=True)
def adapt_compute_loss(run: Run, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
    """Provide the task loss of one micro-batch.

    Called on every forward pass in training. The core's fallback returns ``outputs.loss``; a head
    implements it to weight classes or mask tokens.

    :return: a scalar tensor.
    """


@hookspec
def adapt_loss_terms(run: Run, batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, torch.Tensor] | None:
    """Add terms to the loss (regularisation toward the pretrained weights, auxiliary losses).

    Called on every forward pass in training, after ``adapt_compute_loss``. Not ``firstresult``: the
    terms of all plugins are added to the task loss, and each is logged under its name.

    :return: ``{name: scalar tensor}``, or None.
    """


@hookspec
def adapt_on_step_end(run: Run) -> None:
    """An optimizer step has been taken; ``run.step`` is its 1-based number. Called every step, so
    implementations must be cheap (no device synchronisation)."""


@hookspec
def adapt_on_log(run: Run, logs: dict[str, float]) -> None:
    """Training statistics averaged since the previous log: ``step``, ``epoch``, ``loss`` (the task loss of
    ``adapt_compute_loss`` alone), ``lr``, ``samples_per_second``, and when ``adapt_loss_terms`` contributed,
    one entry per term plus ``total_loss`` (the task loss and the terms: what was minimised). Called every
    ``train.log_every`` steps and at the last step, on every process."""


@hookspec
def adapt_on_evaluate(run: Run, metrics: dict[str, float]) -> None:
    """An evaluation pass over the eval split has finished; ``metrics`` is the head's metrics,
    computed over all processes. Called every ``train.eval_every`` steps and after the last step. A plugin that
    decides from them to end training (early stopping, a sweep's pruner) calls ``run.request_stop(reason)``."""


@hookspec
def adapt_save_artifacts(run: Run, directory: Path) -> None:
    """Save what this plugin trained or needs to restore the run (an adapter, a head, a label map).

    Called on the main process after training. Write under your own sub-folder of ``directory``
    and write atomically (``adapt.atomic_dir``), so a crash never leaves half an artifact.
    """


@hookspec
def adapt_load_artifacts(run: Run, directory: Path) -> None:
    """Restore what ``adapt_save_artifacts`` wrote, on a freshly loaded base model.

    Called on one method at a time in composition order, *instead of* ``adapt_transform_model``,
    when a finished run is loaded back (for evaluation, prediction or export). Replace ``run.model``.
    """


@hookspec
def adapt_restore_state(run: Run, directory: Path) -> None:
    """A finished run is being loaded back (``adapt eval``, ``predict``, ``export``): read what
    ``adapt_save_artifacts`` wrote that is needed *before* the model exists, such as the head's label list.

    Called on every plugin of the run, once, before ``adapt_head_modules``. ``run.dataset`` may hold only
    the "eval" split, or be None (``adapt predict``), so a head must not need the training data once its
    state is restored.
    """


@hookspec(firstresult=True)
def adapt_predict(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Predict for raw examples: labels with scores, tags per word, generated text...

    Called by ``adapt predict`` on a restored run; the head implements it (``adapt.Head`` runs the model over
    the encoded rows in length-sorted batches and turns each row's outputs into a prediction).
    ``firstresult``: the head answers.

    :param rows: one dict per example with the columns the head reads from data (as named by its recipe
        table). Texts given on the command line arrive as ``{"text": TEXT}``; a head whose text column has
        another name reads the key "text" when its own column is absent.
    :return: one JSON-serialisable dict per row, in order.
    """


@hookspec(firstresult=True)
def adapt_prediction_tensor(run: Run, outputs: Any) -> torch.Tensor | None:
    """Name the tensor of the model's outputs that stands for its prediction, batch first.

    Called on every batch by ``adapt export --merge``, which compares this tensor of the exported model with the
    run's, and by ``adapt.Head``'s ``adapt_predict``, which hands each example's row of it to ``Head.format``.
    Per-token tensors (batch, length, ...) are cut to each example's real tokens. ``firstresult``: the head answers
    (``adapt.Head`` returns ``Head.prediction_tensor(outputs)``); without an answer the core takes
    ``outputs.logits``, and a model whose outputs have none is an error naming this hook.

    :param outputs: what the model returned for one batch (called without labels).
    :return: a tensor, e.g. ``outputs.logits``, or start and end logits stacked for extractive QA.
    """


@hookspec
def adapt_export_model(run: Run, merge: bool) -> None:
    """Make ``run.model`` something whose ``save_pretrained`` folder Hugging Face libraries load.

    Called by ``adapt export`` on a restored run, on one method at a time in composition order (an
    8-bit base is dequantised before LoRA merges into it). With ``merge``, fold the method into the base
    architecture's own weights and replace ``run.model`` (LoRA's ``merge_and_unload``); without, leave
    a model that saves in its library's own format (a PEFT adapter folder). Raise an
    :class:`adapt.AdaptError` naming the method when it cannot be expressed that way.
    """


@hookspec
def adapt_summary(run: Run) -> dict[str, Any] | None:
    """Contribute entries to ``summary.json`` (for instance the memory a quantised base saved).

    Called once after the final evaluation. Entries of all plugins are merged; keys should be
    prefixed with the plugin's name.
    """


@hookspec
def adapt_checkpoint_state(run: Run) -> dict[str, Any] | None:
    """Give the state this plugin needs back to continue training exactly after a resume (a schedule's
    position, counters, what a cache holds). Whatever the methods made trainable, the optimizer, the
    scheduler, RNG states and the data position are saved by the core; return only your own state.

    Called on every process, asked of each plugin on its own, whenever a checkpoint is written (every
    ``train.checkpoint_every`` steps, at each epoch end and when a signal stops the run), after the step's
    ``adapt_on_step_end``, log and evaluation. The main process's answer is stored.

    :return: a dict of tensors, numbers, strings, lists and dicts (what ``torch.load(weights_only=True)``
        reads back), or None when there is nothing to keep.
    """


@hookspec
def adapt_load_checkpoint_state(run: Run, state: dict[str, Any]) -> None:
    """Take back what ``adapt_checkpoint_state`` returned, when ``adapt run --resume`` continues a run.

    Called once per plugin that saved a state, after the model, optimizer and scheduler are built and
    their checkpointed values loaded, and before ``adapt_on_train_start`` (``run.resumed_from`` is set and
    ``run.step`` is the checkpoint's). Plugins may change ``requires_grad`` here (for instance to unfreeze
    the layer groups that were training); the optimizer state and learning rates are already restored.
    """


@hookspec
def adapt_on_train_error(run: Run, error: BaseException) -> None:
    """The run failed (or was interrupted) after ``adapt_on_train_start``: close displays and files.
    ``error`` is an ``adapt.Interrupted`` (a KeyboardInterrupt) when SIGINT or SIGTERM stopped the run, after
    its checkpoint was written. The error is raised again once every plugin has been called."""


@hookspec
def adapt_on_train_end(run: Run, summary: dict[str, Any]) -> None:
    """The run has finished and ``summary.json`` has been written; ``summary`` is its content."""
