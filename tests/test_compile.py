"""train.compile: the model's blocks (or the whole model) go through torch.compile in place, train as the
uncompiled model does, and summary.json says what compiled. The "aot_eager" backend traces forward and
backward through the same machinery as TorchInductor without generating kernels, so these tests take seconds."""

from __future__ import annotations

import pytest
import torch

from adapt import AdaptError, find_blocks


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """No compiled code from an earlier test in this process: each test's run compiles its own graphs."""
    torch._dynamo.reset()


COMPILE = {"compile": True, "compile_backend": "aot_eager", "fast_dropout": False}


def trained(run) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in run.unwrapped_model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_a_compiled_model_trains_as_the_uncompiled_one(scope, train_tiny):
    eager_run, _, eager = train_tiny(train={"fast_dropout": False})
    run, before, summary = train_tiny(train={**COMPILE, "compile_scope": scope}, output={"overwrite": True})

    assert eager["compile"] is False
    report = summary["compile"]
    assert report["scope"] == scope and report["backend"] == "aot_eager" and report["graphs"] >= 1
    assert report["graph_breaks"] == 0, report["graph_break_reasons"]  # LoRA's eager fusion stood aside
    _, blocks = find_blocks(run.unwrapped_model)
    compiled = list(blocks) if scope == "blocks" else [run.unwrapped_model]
    assert all(module._compiled_call_impl is not None for module in compiled)
    assert report["modules"] == len(compiled) and report["compile_seconds"] > 0
    expected, got = trained(eager_run), trained(run)
    assert sorted(expected) == sorted(got)  # same names: compiled in place, not wrapped
    moved = [n for n in got if not torch.equal(got[n], before[n])]
    assert moved, "nothing trained"
    far = [n for n in got if not torch.allclose(got[n], expected[n], rtol=1e-4, atol=1e-5)]
    assert not far, f"compiled training went elsewhere: {far[:3]}"
    assert summary["eval"] == pytest.approx(eager["eval"], abs=1e-4)


def test_the_prefix_cache_serves_compiled_top_layers(train_tiny):
    """top-layers' cache takes its frozen blocks out of the compiled code while it serves them, and gives it back."""
    methods = {"top-layers": {"train_last": 1, "cache_dtype": "float32"}}
    run, _, summary = train_tiny(methods=methods, train={**COMPILE, "epochs": 3, "fast_dropout": True})

    cache = summary["top-layers"]["cache"]
    assert cache["hits"] > 0 and cache["misses"] > 0
    assert summary["compile"]["graphs"] >= 1, summary["compile"]
    assert summary["throughput"]["fast_dropout"] is True and summary["compile"]["graph_breaks"] == 0
    _, blocks = find_blocks(run.unwrapped_model)
    assert all(block._compiled_call_impl is not None for block in blocks)  # restored when training ended


def test_inductor_without_a_cxx_compiler_is_named(monkeypatch):
    import adapt.speed.compiling as compiling

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    with pytest.raises(AdaptError, match=r"train\.compile: .*no C\+\+ compiler.*aot_eager"):
        compiling.compile_model(torch.nn.Linear(2, 2), "model", "default", "inductor", "cpu")


def test_compiled_code_on_a_cpu_calls_torchs_random_ops():
    """TorchInductor's own CPU random numbers made a compiled step about 30% slower than torch's (and fast
    dropout's) kernels: a compiled CPU run falls back to them while it trains."""
    from types import SimpleNamespace

    import torch._inductor.config as inductor

    from adapt.speed.compiling import compiled_dropout

    def run(backend: str, device: str):
        return SimpleNamespace(compiled={"backend": backend}, accelerator=SimpleNamespace(device=torch.device(device)))

    before = inductor.fallback_random
    with compiled_dropout(run("inductor", "cpu")):
        assert inductor.fallback_random is True
    assert inductor.fallback_random is before
    with compiled_dropout(run("aot_eager", "cpu")), compiled_dropout(SimpleNamespace(compiled=None)):
        assert inductor.fallback_random is before
