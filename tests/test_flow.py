"""Optical flow: accuracy against exact ground truth, torch vs OpenCV, TSN output, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from extract.errors import UserError
from extract.flow.stacks import (
    FlowInputError,
    FlowParams,
    compute_flow,
    dequantize_flow,
    flow_stacks,
    quantize_flow,
)
from extract.flow.truth import FAMILIES, endpoint_error, make_pairs, translated_stack
from extract.flow.tvl1_inner import inner_iterations
from extract.flow.tvl1_torch import median_filter, opencv_median, sorting_median

SIZE = (128, 96)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP barriers make 2 threads several
    times slower (results are the same; the library itself never changes the setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(SIZE)


@pytest.fixture(scope="module")
def frames(pairs):
    return np.stack([p.i0 for p in pairs]), np.stack([p.i1 for p in pairs])


@pytest.fixture(scope="module")
def torch_flow(frames, monkeypatch_module):
    monkeypatch_module.setenv("AC_FLOW_COMPILE", "0")  # eager here; compiled checked below
    return compute_flow(*frames, backend="torch")


@pytest.fixture(scope="module")
def opencv_flow(frames):
    return compute_flow(*frames, backend="opencv")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _family_epe(flow: np.ndarray, pairs) -> dict[str, float]:
    return {
        fam: float(np.mean([endpoint_error(f, p) for f, p in zip(flow, pairs, strict=True)
                            if p.family == fam]))
        for fam in FAMILIES
    }


def test_torch_epe_at_most_1_1x_opencv_per_family(pairs, torch_flow, opencv_flow):
    ours, ref = _family_epe(torch_flow, pairs), _family_epe(opencv_flow, pairs)
    for fam in FAMILIES:
        assert ours[fam] <= 1.1 * ref[fam], (fam, ours[fam], ref[fam])


def test_torch_recovers_translations_to_a_fraction_of_a_pixel(pairs, torch_flow):
    for flow, pair in zip(torch_flow, pairs, strict=True):
        if pair.family == "translation":
            assert endpoint_error(flow, pair) < 0.15, pair.name
            mean = flow[:, pair.valid].mean(axis=1)
            truth = pair.flow[:, 0, 0]  # TV-L1 stops early: OpenCV undershoots alike (~7%)
            assert (np.abs(mean - truth) <= 0.1 * np.abs(truth) + 0.05).all(), (pair.name, mean)


def test_output_layout_is_float32_x_then_y(torch_flow, frames):
    assert torch_flow.shape == (len(frames[0]), 2, SIZE[1], SIZE[0])
    assert torch_flow.dtype == np.float32


def test_batch_result_does_not_depend_on_batch_mates(frames, torch_flow, monkeypatch):
    monkeypatch.setenv("AC_FLOW_COMPILE", "0")
    alone = compute_flow(frames[0][3], frames[1][3], backend="torch")
    assert alone.shape == (1, 2, SIZE[1], SIZE[0])
    np.testing.assert_allclose(alone[0], torch_flow[3], atol=1e-4)


def test_dis_runs_and_is_in_the_same_league(pairs, frames):
    flow = compute_flow(*frames, backend="dis")
    assert flow.shape == (len(pairs), 2, SIZE[1], SIZE[0]) and flow.dtype == np.float32
    epe = _family_epe(flow, pairs)
    assert all(np.isfinite(v) and v < 1.0 for v in epe.values()), epe


def test_bilinear_warping_also_tracks_translations(pairs, frames, monkeypatch):
    monkeypatch.setenv("AC_FLOW_COMPILE", "0")
    picks = [i for i, p in enumerate(pairs) if p.family == "translation"]
    flow = compute_flow(frames[0][picks], frames[1][picks], "torch",
                        FlowParams(interpolation="bilinear"))
    for f, i in zip(flow, picks, strict=True):
        assert endpoint_error(f, pairs[i]) < 0.2


def test_float_frames_in_unit_range_match_uint8(frames, monkeypatch):
    monkeypatch.setenv("AC_FLOW_COMPILE", "0")
    params = FlowParams(nscales=2, warps=2)
    a, b = frames[0][:1], frames[1][:1]
    as_uint8 = compute_flow(a, b, "torch", params)
    as_float = compute_flow(a / 255.0, b / 255.0, "torch", params)
    np.testing.assert_allclose(as_float, as_uint8, atol=1e-3)


def test_median_network_equals_sorting_median_and_opencv():
    u = torch.randn(3, 2, 20, 31, generator=torch.Generator().manual_seed(1))
    for size in (3, 5):
        expected = sorting_median(u, size)
        assert torch.equal(median_filter(size)(u), expected)
        reference = cv2.medianBlur(u[0, 0].numpy(), size)  # float input: replicated border
        assert np.array_equal(expected[0, 0].numpy(), reference)
        assert torch.equal(opencv_median(u, size), expected)  # the eager CPU path


def _iteration_state(pair_frames, size):
    """A realistic inner-iteration state: warped gradients of real frames, small flow."""
    i0 = torch.tensor(pair_frames[0][:2], dtype=torch.float32)[:, None]
    i1 = torch.tensor(pair_frames[1][:2], dtype=torch.float32)[:, None]
    gx = 0.5 * (F.pad(i1, (1, 1, 0, 0), mode="replicate")[..., 2:]
                - F.pad(i1, (1, 1, 0, 0), mode="replicate")[..., :-2])
    gy = 0.5 * (F.pad(i1, (0, 0, 1, 1), mode="replicate")[..., 2:, :]
                - F.pad(i1, (0, 0, 1, 1), mode="replicate")[..., :-2, :])
    grad = torch.cat([gx, gy], dim=1)
    u = torch.zeros(2, 2, *i0.shape[-2:])
    return (u, torch.zeros_like(u), torch.zeros_like(u), torch.ones(2, dtype=torch.bool), grad,
            grad.square().sum(1, keepdim=True), i1 - i0, 0.045, 0.3, 0.25 / 0.3, 1e-4, 6)


@pytest.mark.slow  # about 20 s of torch.compile; make test-all runs it
def test_compiled_inner_iterations_match_eager(frames):
    state = _iteration_state(frames, SIZE)
    compiled = torch.compile(inner_iterations, fullgraph=True, dynamic=True)
    with torch.inference_mode():
        expected = inner_iterations(*state)
        got = compiled(*state)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_inner_iterations_have_no_graph_breaks(frames):
    explanation = torch._dynamo.explain(inner_iterations)(*_iteration_state(frames, SIZE))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(frames):
    cpu = compute_flow(frames[0][:4], frames[1][:4], "torch", device="cpu")
    gpu = compute_flow(frames[0][:4], frames[1][:4], "torch", device="cuda")
    assert np.abs(cpu - gpu).max() < 1e-2


def test_quantisation_round_trips_within_half_a_level():
    values = np.linspace(-30, 30, 10001, dtype=np.float32)
    q = quantize_flow(values)
    assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255
    back = dequantize_flow(q)
    assert np.abs(back - np.clip(values, -20, 20)).max() <= 40 / 255 / 2 + 1e-6
    assert quantize_flow(np.float32(0.0)) == 128  # 127.5 rounds to even
    assert quantize_flow(np.float32(2.0)) == round(255 * 22 / 40)


def test_flow_stacks_interleave_x_and_y_per_pair(monkeypatch):
    monkeypatch.setenv("AC_FLOW_COMPILE", "0")
    stack = translated_stack(SIZE, (2.0, 0.0), frames=3)
    stacks = np.stack([stack, stack])  # K=2 stacks of M=3 frames
    out = flow_stacks(stacks, backend="torch", batch_size=3)
    assert out.shape == (2, 4, SIZE[1], SIZE[0]) and out.dtype == np.uint8
    inner = out[..., 10:-10, 10:-10].astype(np.float64)
    x_level = round(255 * (2 + 20) / 40)
    for c in (0, 2):  # x1, x2
        assert abs(np.median(inner[:, c]) - x_level) <= 1
    for c in (1, 3):  # y1, y2
        assert abs(np.median(inner[:, c]) - 128) <= 1
    wider = flow_stacks(stacks, backend="torch", batch_size=3, bound=40.0)  # profile's `bound`
    assert abs(np.median(wider[:, 0, 10:-10, 10:-10]) - round(255 * (2 + 40) / 80)) <= 1


@pytest.mark.parametrize(
    ("prev", "nxt", "backend", "message"),
    [
        (np.zeros((2, 32, 32), np.uint8), np.zeros((2, 32, 40), np.uint8), "torch", "differ"),
        (np.zeros((1, 32, 32), np.int32), np.zeros((1, 32, 32), np.int32), "torch", "dtype"),
        (np.zeros((0, 32, 32), np.uint8), np.zeros((0, 32, 32), np.uint8), "torch", "empty"),
        (np.zeros((1, 32, 32), np.uint8), np.zeros((1, 32, 32), np.uint8), "farneback", "unknown"),
        (np.full((1, 32, 32), np.nan), np.zeros((1, 32, 32)), "torch", "NaN"),
        (np.full((1, 32, 32), 200.0), np.zeros((1, 32, 32)), "torch", "[0, 1]"),
        (np.zeros((1, 3, 32, 32), np.uint8), np.zeros((1, 3, 32, 32), np.uint8), "torch", "shape"),
        (np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 8), np.uint8), "torch", "16x16"),
    ],
)
def test_bad_inputs_raise_one_clear_user_error(prev, nxt, backend, message):
    with pytest.raises(FlowInputError, match=message) as info:
        compute_flow(prev, nxt, backend=backend)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_bad_options_raise_user_errors():
    with pytest.raises(UserError, match="interpolation"):
        FlowParams(interpolation="nearest")
    frame = np.zeros((1, 32, 32), np.uint8)
    with pytest.raises(UserError, match="bicubic"):
        compute_flow(frame, frame, "opencv", FlowParams(interpolation="bilinear"))
    with pytest.raises(UserError, match="M >= 2"):
        flow_stacks(np.zeros((2, 1, 32, 32), np.uint8))


def test_params_record_as_plain_dict():
    record = FlowParams().to_dict()
    assert record["tau"] == 0.25 and record["nscales"] == 5 and record["interpolation"] == "bicubic"
    assert FlowParams(**record) == FlowParams()


@pytest.mark.parametrize(("backend", "params", "message"), [
    ("torch", FlowParams(gamma=0.1), "flow gamma=0.1: only the opencv backend"),
    ("opencv", FlowParams(interpolation="bilinear"),
     "flow interpolation='bilinear': the opencv backend is bicubic only"),
])
def test_a_backend_refuses_what_it_cannot_do(backend: str, params: FlowParams,
                                             message: str) -> None:
    frames = np.zeros((32, 32), dtype=np.uint8)
    with pytest.raises(UserError, match=message):
        compute_flow(frames, frames, backend, params)
