"""The CPU default TV-L1 inner loop in C (extract/flow/native.py): the Python loop's values and
stopping decisions, one build per cache folder that later processes only load, the flow of
the whole method beside eager and OpenCV, and the fallback when no compiler works."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.flow import aot, native
from extract.flow.stacks import FlowParams, compute_flow
from extract.flow.truth import FAMILIES, endpoint_error, make_pairs
from extract.flow.tvl1_inner import inner_iterations
from extract.flow.tvl1_torch import COMPILE_ENV, NATIVE_ENV, tvl1
from tests.processes import flow_in_fresh_processes

SIZE = (128, 96)


@pytest.fixture()
def own_cache(monkeypatch, tmp_path) -> Path:
    """An empty cache folder, and no library remembered by this process."""
    monkeypatch.setenv(aot.CACHE_ENV, str(tmp_path))
    native._loaded_or_error.cache_clear()
    yield tmp_path
    native._loaded_or_error.cache_clear()


def _state(batch: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, 2, h, w, generator=g) * 0.5
    px, py = (torch.randn(batch, 2, h, w, generator=g) * 0.1 for _ in range(2))
    grad = torch.randn(batch, 2, h, w, generator=g)
    grad[0, :, :3] = 0.0  # rows where |grad|^2 <= FLT_EPSILON: the middle case's zero
    return u, px, py, grad, grad.square().sum(1, keepdim=True), torch.randn(batch, 1, h, w,
                                                                            generator=g)


def test_the_c_loop_gives_the_python_loops_values_and_stops(own_cache) -> None:
    u, px, py, grad, grad_sq, rho_c = _state(4, 23, 37)
    active = torch.tensor([True, True, False, True])
    kernel = native.native_inner()
    assert kernel.built_here and kernel.path.parent == own_cache
    for count in (1, 3, 8):
        args = (u, px, py, active, grad, grad_sq, rho_c, 0.045, 0.3, 0.833, 1e-4, count)
        want, got = inner_iterations(*args), kernel(*args)
        for name, a, b in zip(("u", "px", "py"), want[:3], got[:3], strict=True):
            assert (a - b).abs().max() < 1e-5, (name, count)
        assert torch.equal(want[3], got[3])
        assert torch.equal(got[2][2], py[2])  # a frozen pair is left as it was
    # a threshold every pair meets at once: each stops after its first iteration, as eager
    args = (u, px, py, torch.ones(4, dtype=torch.bool), grad, grad_sq, rho_c, 0.045, 0.3,
            0.833, 1e9, 5)
    want, got = inner_iterations(*args), kernel(*args)
    assert not got[3].any() and (want[0] - got[0]).abs().max() < 1e-5
    assert torch.equal(u, _state(4, 23, 37)[0])  # the inputs are not written


def test_one_build_then_fresh_processes_load_it_and_match_eager_and_opencv(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (COMPILE_ENV, NATIVE_ENV)}
    reports, flows = flow_in_fresh_processes(
        "extract.flow.native:native_inner()", "torch._inductor", SIZE,
        env | {aot.CACHE_ENV: str(tmp_path)}, tmp_path, timeout_s=600)
    first, second = reports
    assert first["built_here"] and not second["built_here"] and second["load_s"] < 1.0
    assert not second["compiler_imported"]
    assert len(list(tmp_path.glob("tvl1-inner-native-*.so"))) == 1
    assert np.array_equal(flows[0], flows[1])
    pairs = make_pairs(SIZE)
    prev, nxt = np.stack([p.i0 for p in pairs]), np.stack([p.i1 for p in pairs])
    eager = compute_flow(prev, nxt, "torch")  # the test session runs eager (conftest)
    assert np.abs(flows[0] - eager).mean() < 5e-3  # a few median ties and stops flip
    reference = compute_flow(prev, nxt, "opencv")
    for family in FAMILIES:
        picks = [i for i, p in enumerate(pairs) if p.family == family]
        ours = np.mean([endpoint_error(flows[0][i], pairs[i]) for i in picks])
        theirs = np.mean([endpoint_error(reference[i], pairs[i]) for i in picks])
        assert ours <= 1.1 * theirs, (family, ours, theirs)


def test_without_a_compiler_it_warns_and_the_flow_is_the_same(own_cache, monkeypatch) -> None:
    monkeypatch.setenv("CC", "/bin/false")

    def no_inductor(dest: Path, count: int) -> None:
        raise RuntimeError("no C++ compiler either")

    monkeypatch.setattr(aot, "build_inner", no_inductor)
    pairs = make_pairs(SIZE)[:2]
    i0 = torch.tensor(np.stack([p.i0 for p in pairs]), dtype=torch.float32)[:, None]
    i1 = torch.tensor(np.stack([p.i1 for p in pairs]), dtype=torch.float32)[:, None]
    light = FlowParams(nscales=2, warps=1, outer_iterations=2, inner_iterations=10)
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        fallback = tvl1(i0, i1, light, compile=True)
        eager = tvl1(i0, i1, light, compile=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("native TV-L1 loop unavailable" in m and "/bin/false" in m for m in messages)
    assert torch.equal(fallback, eager)
    assert not list(own_cache.glob("*.so"))
