"""Composition by capability: methods say what they do (`PluginInfo.provides`) and what they need beside them
(`needs`, `runs_after`, `conflicts` by name or capability), and the recipe's rules read only that, so a third-party
method composes with the built-ins on the built-ins' own terms."""

from __future__ import annotations

import warnings

import pytest
import torch

from adapt import Capability, PluginInfo, RecipeError
from adapt.plugin.manager import Catalogue
from adapt.recipe.composition import composition_problems
from adapt.recipe.loader import load_recipe

pytestmark = pytest.mark.usefixtures("builtins_only")


@pytest.fixture
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


class BiasOnly:
    """A third party's method: trains the biases (BitFit) and the head; `provides` as its author declared it."""

    provides: tuple[str, ...] = (Capability.TRAINS_PRETRAINED_WEIGHTS,)

    def adapt_plugin_info(self):
        return PluginInfo(kind="method", summary="BitFit: only biases and the head train", provides=self.provides)

    def adapt_transform_model(self, run):
        for name, param in run.model.named_parameters():
            param.requires_grad_(name.endswith("bias") or any(name.startswith(h) for h in run.head_prefixes))


class SilentBiasOnly(BiasOnly):
    provides = ()


def _methods(catalogue) -> dict[str, PluginInfo]:
    return {n: i for n, i in catalogue.infos.items() if i.kind == "method"}


def test_a_third_party_method_that_trains_pretrained_weights_composes_with_distill(tiny_recipe, run_recipe):
    recipe = tiny_recipe(methods={"distill": {"weight": 1.0}, "bias-only": {}})
    loaded = load_recipe(recipe, Catalogue.discover(extra={"bias-only": BiasOnly}).infos)
    assert loaded.methods == ("bias-only", "distill")  # distill runs after what trains, whatever the recipe's order

    before = {}

    class Snapshot:
        def adapt_on_train_start(self, run):
            before.update({n: p.detach().clone() for n, p in run.unwrapped_model.named_parameters()})

    trained = run_recipe(recipe, plugins={"bias-only": BiasOnly, "snapshot": Snapshot()})
    assert all("distill" in log for log in trained.train_logs())  # the regulariser's term was computed every log
    after = dict(trained.run.unwrapped_model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    assert any(n.endswith("bias") and "encoder" in n for n in changed)
    assert not [n for n in changed if not n.endswith("bias") and not n.startswith("classifier")]  # weights stayed


def test_the_same_method_without_capabilities_is_refused_with_what_would_satisfy_distill(tiny_recipe):
    catalogue = Catalogue.discover(extra={"bias-only": SilentBiasOnly})
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe(methods={"bias-only": {}, "distill": {}}), catalogue.infos)
    (problem,) = [p for p in info.value.problems if "'distill' needs" in p]
    assert "trains pretrained weights or trains new modules beside the pretrained weights" in problem
    assert "lora" in problem and "full" in problem and "bias-only" not in problem


def test_a_declared_third_party_method_is_offered_where_its_capability_is_needed():
    catalogue = Catalogue.discover(extra={"bias-only": BiasOnly})
    (problem,) = composition_problems(["l2sp"], _methods(catalogue))
    assert "needs one of full, gradual-unfreezing, top-layers, bias-only beside it" in problem
    assert composition_problems(["bias-only", "l2sp"], _methods(catalogue)) == []


def test_every_built_in_conflict_names_both_methods_and_its_reason():
    methods = _methods(Catalogue.discover())
    pairs = [(a, b, why) for a, info in methods.items() for b, why in info.conflicts.items() if b in methods]
    assert len(pairs) >= 10  # full, gradual-unfreezing, head-only and top-layers declare theirs
    for a, b, why in pairs:
        problems = composition_problems([a, b], methods)
        assert f"methods: '{a}' cannot be combined with '{b}': {why}" in problems, (a, b, problems)
        assert any(f"'{b}' cannot be combined with '{a}': {why}" in p for p in composition_problems([b, a], methods))


def test_every_built_in_need_lists_each_installed_method_that_meets_it_and_each_one_does():
    methods = _methods(Catalogue.discover())
    needing = {n: i for n, i in methods.items() if i.needs}
    assert set(needing) == {"int8", "l2sp", "distill", "mlm"}
    for name, info in needing.items():
        givers = [n for n, i in methods.items() if n != name and set(info.needs) & set(i.provides)]
        (problem,) = composition_problems([name], methods)
        expected = f"methods: '{name}' needs one of {', '.join(givers)} beside it ([methods.{givers[0]}])"
        assert problem.startswith(expected), problem
        for giver in givers:
            unmet = [p for p in composition_problems([name, giver], methods) if "needs" in p and f"'{name}'" in p]
            assert not unmet, (name, giver)


def test_a_conflict_may_name_a_capability():
    class NoQuantised:
        def adapt_plugin_info(self):
            return PluginInfo(
                kind="method",
                provides=(Capability.TRAINS_PRETRAINED_WEIGHTS,),
                conflicts={Capability.QUANTISES_BASE: "it rewrites every weight in full precision"},
            )

    methods = _methods(Catalogue.discover(extra={"rewrite": NoQuantised()}))
    assert "methods: 'int8' cannot be combined with 'rewrite': it rewrites every weight in full precision" in (
        composition_problems(["int8", "rewrite", "lora"], methods)
    )


def test_the_deprecated_name_lists_still_compose_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = PluginInfo(kind="method", after=("lora",), needs_one_of=("lora", "adapters"))
    assert [str(w.message).split(" ")[0] for w in caught] == ["PluginInfo.after", "PluginInfo.needs_one_of"]
    assert all(issubclass(w.category, DeprecationWarning) for w in caught)

    class Legacy:
        def adapt_plugin_info(self):
            return old

    methods = _methods(Catalogue.discover(extra={"legacy": Legacy()}))
    assert composition_problems(["legacy"], methods) == [
        "methods: 'legacy' needs one of lora, adapters beside it ([methods.lora])"
    ]
    from adapt.recipe.composition import order_methods

    assert order_methods(["legacy", "lora"], methods) == ["lora", "legacy"]


@pytest.mark.parametrize("regulariser", ["l2sp", "distill"])
def test_a_regulariser_trains_beside_top_layers_which_trains_pretrained_weights(train_tiny, regulariser):
    run, before, summary = train_tiny(methods={regulariser: {}, "top-layers": {"train_last": 1}})
    assert run.recipe.methods == ("top-layers", regulariser)
    after = dict(run.unwrapped_model.named_parameters())
    changed = {n for n in before if not torch.equal(after[n].detach(), before[n])}
    assert any("layer.1." in n for n in changed) and not any("layer.0." in n for n in changed)
    assert summary["eval"]["accuracy"] >= 0
