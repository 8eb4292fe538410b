"""The CPU TV-L1's inductor artefact (what runs where the C loop of tests/test_flow_native.py
cannot be built; AC_FLOW_NATIVE=0 here): its cache folder, one build per machine (even when
workers start together), loads in fresh processes, and the eager fallback."""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.flow import aot
from extract.flow.stacks import FlowParams, compute_flow
from extract.flow.truth import FAMILIES, endpoint_error, make_pairs
from extract.flow.tvl1_torch import COMPILE_ENV, NATIVE_ENV, compile_wanted, tvl1
from tests.processes import flow_in_fresh_processes

SIZE = (128, 96)
LIGHT = FlowParams(nscales=2, warps=1, outer_iterations=2, inner_iterations=10)


def test_cache_folder_is_the_env_var_else_xdg_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv(aot.CACHE_ENV, str(tmp_path / "mine"))
    assert aot.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(aot.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert aot.cache_dir() == tmp_path / "xdg" / "attention-clusters" / "flow"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert aot.cache_dir() == tmp_path / "home" / ".cache" / "attention-clusters" / "flow"


def test_artefact_names_differ_by_thread_count_and_block(monkeypatch, tmp_path):
    monkeypatch.setenv(aot.CACHE_ENV, str(tmp_path))
    names = {aot.artefact_path(count, threads) for count in (1, 2) for threads in (1, 2)}
    assert len(names) == 4 and all(p.parent == tmp_path and p.suffix == ".pt2" for p in names)
    assert aot.artefact_path(2, 1) == aot.artefact_path(2, 1)  # stable: later runs find it


def test_compiled_is_the_default_and_the_env_var_overrides(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert compile_wanted(None, cpu)
    monkeypatch.setenv(COMPILE_ENV, "0")
    assert not compile_wanted(None, cpu) and compile_wanted(True, cpu)
    monkeypatch.setenv(COMPILE_ENV, "1")
    assert compile_wanted(None, cpu) and not compile_wanted(False, cpu)


def _slow_fake_build(log: Path):
    def build(dest: Path) -> None:
        with log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        dest.write_bytes(b"half")
        time.sleep(0.5)  # long enough for the other processes to arrive meanwhile
        dest.write_bytes(b"half" + b"-whole")
    return build


def _warm(path: Path, log: Path, results: multiprocessing.Queue) -> None:
    results.put(aot.ensure_artefact(path, _slow_fake_build(log)))


def test_workers_starting_together_build_once_and_all_read_the_whole_file(tmp_path):
    path, log = tmp_path / "cache" / "kernel.pt2", tmp_path / "builds.log"
    context = multiprocessing.get_context("fork")  # the test's imports are already done
    results = context.Queue()
    workers = [context.Process(target=_warm, args=(path, log, results)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert sorted(results.get(timeout=5) for _ in workers) == [False, False, True]
    assert len(log.read_text().splitlines()) == 1
    assert path.read_bytes() == b"half-whole"
    assert sorted(p.name for p in path.parent.iterdir()) == ["kernel.lock", "kernel.pt2"]
    assert not aot.ensure_artefact(path, _slow_fake_build(log))  # a later run only loads


def test_a_failed_build_leaves_no_file_and_the_next_try_builds(tmp_path):
    path = tmp_path / "kernel.pt2"

    def broken(dest: Path) -> None:
        dest.write_bytes(b"partial")
        raise RuntimeError("no C++ compiler")

    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        aot.ensure_artefact(path, broken)
    assert [p.name for p in tmp_path.iterdir()] == ["kernel.lock"]
    assert aot.ensure_artefact(path, lambda dest: dest.write_bytes(b"ok"))
    assert path.read_bytes() == b"ok"


def test_a_failing_compile_warns_once_and_gives_the_eager_flow(monkeypatch, tmp_path):
    monkeypatch.setenv(aot.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(NATIVE_ENV, "0")
    attempts = []

    def no_compiler(dest: Path, count: int) -> None:
        attempts.append(count)
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(aot, "build_inner", no_compiler)
    pairs = make_pairs(SIZE)[:2]
    i0 = torch.tensor(np.stack([p.i0 for p in pairs]), dtype=torch.float32)[:, None]
    i1 = torch.tensor(np.stack([p.i1 for p in pairs]), dtype=torch.float32)[:, None]
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        fallback = [tvl1(i0, i1, LIGHT, compile=True) for _ in range(2)]
        eager = tvl1(i0, i1, LIGHT, compile=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "no C++ compiler" in messages[0], messages
    assert "falls back to eager" in messages[0]
    assert attempts == [2]  # the failure is remembered by the process, not retried per call
    for flow in fallback:
        assert torch.equal(flow, eager)
    assert not list(tmp_path.glob("*.pt2"))


@pytest.fixture(scope="module")
def two_fresh_processes(tmp_path_factory):
    """The first process on an empty cache (builds), then a second one (loads): their reports,
    their flows, and the cache folder; the compiled path (AC_FLOW_COMPILE unset) with the
    inductor artefact (AC_FLOW_NATIVE=0)."""
    folder = tmp_path_factory.mktemp("flow-cache")
    env = {k: v for k, v in os.environ.items() if k != COMPILE_ENV}
    env |= {aot.CACHE_ENV: str(folder), "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),
            NATIVE_ENV: "0"}
    reports, flows = flow_in_fresh_processes("extract.flow.aot:inner_kernel(2)",
                                             "torch._inductor.compile_fx", SIZE, env, folder,
                                             timeout_s=1800)
    return reports, flows, folder


@pytest.mark.slow  # the real cold build: about a minute on a busy 2-core machine
def test_the_first_process_builds_and_the_next_only_loads(two_fresh_processes):
    (first, second), (flow1, flow2), folder = two_fresh_processes
    assert first["built_here"] and not second["built_here"]
    assert not second["compiler_imported"] and second["load_s"] < 2.0
    assert len(list(folder.glob("tvl1-inner-*.pt2"))) == 1
    assert np.array_equal(flow1, flow2)  # the same library, the same bits


@pytest.mark.slow
def test_the_artefact_flow_matches_eager_and_opencv(two_fresh_processes, monkeypatch):
    _, (flow, _), folder = two_fresh_processes
    pairs = make_pairs(SIZE)
    prev, nxt = np.stack([p.i0 for p in pairs]), np.stack([p.i1 for p in pairs])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setenv(COMPILE_ENV, "0")
        eager = compute_flow(prev, nxt, "torch")
        monkeypatch.setenv(COMPILE_ENV, "1")
        monkeypatch.setenv(NATIVE_ENV, "0")
        monkeypatch.setenv(aot.CACHE_ENV, str(folder))  # loads what the processes built
        one_pass = FlowParams(nscales=1, warps=1, outer_iterations=1, median_filtering=1)
        compiled_one = compute_flow(prev[:4], nxt[:4], "torch", one_pass)
        monkeypatch.setenv(COMPILE_ENV, "0")
        eager_one = compute_flow(prev[:4], nxt[:4], "torch", one_pass)
    finally:
        torch.set_num_threads(before)
    assert np.abs(compiled_one - eager_one).max() < 1e-4  # the same arithmetic
    # over thousands of iterations rounding-level differences flip a few median ties and
    # stopping decisions: the fields agree closely on average and in accuracy, not bit for bit
    assert np.abs(flow - eager).mean() < 5e-3
    reference = compute_flow(prev, nxt, "opencv")
    for family in FAMILIES:
        picks = [i for i, p in enumerate(pairs) if p.family == family]
        ours = np.mean([endpoint_error(flow[i], pairs[i]) for i in picks])
        theirs = np.mean([endpoint_error(reference[i], pairs[i]) for i in picks])
        same = np.mean([endpoint_error(eager[i], pairs[i]) for i in picks])
        assert ours <= 1.1 * theirs and abs(ours - same) < 0.02 * same, (family, ours, same)
