"""What a training step of one grid configuration costs here, and so which precision it uses.

Why measured: a lower precision is allowed only for the units whose accuracy it leaves
unchanged (settings.auto_precisions, shown by bench/flash_precision.py), and whether it is
faster depends on the CPU and the size: bf16 was 2.8x as fast at N=8 on an AMD EPYC, 0.64x at
N=32 and 0.80x at N=128 on an Intel Xeon without AMX; bf16_head speeds up large clusters,
whose step is mostly the head (docs/reproduction.md). So each configuration times a few
steps of its own model in every allowed precision and trains in the fastest; the time per
step also tells a grid worker whether the configuration can finish before its deadline
(`reproduce --hours`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from model.network import AttentionClusterNet, loss_fn
from pipeline.train.precision import forward_in

WARMUP_STEPS = 3
TIMED_STEPS = 12


@dataclass(frozen=True)
class StepCost:
    """The precision chosen and the milliseconds per step measured for each one tried."""

    precision: str
    milliseconds: dict[str, float]

    @property
    def step_ms(self) -> float:
        return self.milliseconds[self.precision]


def _step_ms(model: AttentionClusterNet, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor,
             precision: str) -> float:
    """Mean milliseconds of TIMED_STEPS full training steps (forward, loss, backward, Adam)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    criterion = loss_fn("single")
    device = labels.device

    def step() -> None:
        logits, _ = forward_in(model, {"probe": inputs}, precision, device)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - started) / TIMED_STEPS


def measure_step_cost(units: int, network: Mapping[str, Any], shape: tuple[int, int],
                      batch_size: int, precisions: tuple[str, ...], device: torch.device
                      ) -> StepCost:
    """Time a freshly made copy of the configuration's network (a cluster of `units`;
    `network`: AttentionClusterNet's other arguments) on random features of `shape` (positions,
    width) in each precision; the fastest wins (the first on a tie or when only one is allowed).
    The caller's random state is left as it was, so the training that follows is unchanged."""
    positions, width = shape
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        features = torch.randn(batch_size, positions, width, device=device)
        mask = torch.ones(batch_size, positions, dtype=torch.bool, device=device)
        present = torch.ones(batch_size, dtype=torch.bool, device=device)
        labels = torch.randint(0, network["num_classes"], (batch_size,), device=device)
        timings = {}
        for precision in precisions:
            model = AttentionClusterNet({"probe": (width, units)}, **network).to(device)
            timings[precision] = round(_step_ms(model, (features, mask, present), labels,
                                                precision), 3)
    fastest = min(precisions, key=lambda p: (timings[p], precisions.index(p)))
    return StepCost(fastest, timings)
