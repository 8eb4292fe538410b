"""Would the Flash-MNIST grid finish sooner with configurations trained as one batched step?

The grid trains three seeds of every configuration with N <= 8, and the seeds share an
architecture, so their weights can be stacked and one training step run for all of them
(torch.func.vmap over the stacked weights, one fused Adam over the stacks). This times
`--seeds` separate steps against one stacked step, at one thread as the grid's workers, in
alternating rounds (the ratio of each round, median over rounds), on random features of the
grid's shape, and checks that the stacked step computes what the separate ones do: with
dropout off, the largest relative gradient difference of a first step on the same batches
(only the first: after it, Adam's sign-moves of near-zero gradients part them, see below).
docs/reproduction.md quotes it (`--write-docs` saves docs/reproduction-batched.json).

Usage: .venv/bin/python bench/flash_batched.py [--quick] [--write-docs]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.network import AttentionClusterNet  # noqa: E402
from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.study.flash_features import MODALITY  # noqa: E402
from pipeline.study.report import BATCHED_CHECK, machine_description  # noqa: E402
from pipeline.study.settings import AUTHORS, BATCH_SIZE, DROPOUT  # noqa: E402

POSITIONS, WIDTH, CLASSES = 25, 50, 1024  # a Flash-MNIST video's LeNet features
CONFIGS = (("linear", 1), ("linear", 8), ("mlp_shared", 1), ("mlp_shared", 8))
QUICK_CONFIGS = (("linear", 1),)


class ClusterAndHead(nn.Module):
    """The grid's network on videos that are all present (Flash-MNIST's are): the cluster,
    dropout and the head, without the absent-video branch that vmap cannot trace."""

    def __init__(self, unit: str, units: int, dropout: float) -> None:
        super().__init__()
        self.net = AttentionClusterNet({MODALITY: (WIDTH, units)}, CLASSES, unit=unit,
                                       shifting=True, dropout=dropout)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        encoded, _ = self.net.clusters[MODALITY](features, mask)
        return self.net.classify(encoded)


def made(unit: str, units: int, seeds: int, dropout: float) -> list[ClusterAndHead]:
    models = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        models.append(ClusterAndHead(unit, units, dropout).train())
    return models


def separate_stepper(models: list[ClusterAndHead]) -> Callable[[torch.Tensor, torch.Tensor,
                                                               torch.Tensor], None]:
    """One training step of each model on its own batch (what the grid runs today)."""
    optimizers = [torch.optim.Adam(m.parameters(), lr=AUTHORS.lr, fused=True) for m in models]

    def step(features: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        for index, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
            loss = nn.functional.cross_entropy(model(features[index], mask), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return step


def stacked_stepper(models: list[ClusterAndHead]) -> tuple[
        Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None], dict[str, torch.Tensor]]:
    """One training step of all models at once on their stacked weights; the losses are
    summed, so each model's gradient is its own loss's (the weights are disjoint)."""
    stacked, buffers = stack_module_state(models)
    weights = {name: nn.Parameter(value) for name, value in stacked.items()}
    optimizer = torch.optim.Adam(weights.values(), lr=AUTHORS.lr, fused=True)
    template = copy.deepcopy(models[0]).to("meta")

    def one(weights: dict, buffers: dict, features: torch.Tensor, mask: torch.Tensor
            ) -> torch.Tensor:
        return functional_call(template, (weights, buffers), (features, mask))

    every = torch.func.vmap(one, in_dims=(0, 0, 0, None), randomness="different")

    def step(features: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        logits = every(weights, buffers, features, mask)
        losses = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                             reduction="none")
        loss = losses.view(labels.shape).mean(dim=1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, weights


def random_batches(seeds: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(features (seeds, B, L, D), labels (seeds, B)): each seed's model its own batch."""
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(seeds, BATCH_SIZE, POSITIONS, WIDTH, generator=generator),
             torch.randint(0, CLASSES, (seeds, BATCH_SIZE), generator=generator))
            for _ in range(count)]


def largest_difference(unit: str, units: int, seeds: int) -> float:
    """Largest gradient difference between separate and stacked steps on the same batches,
    relative to the model's largest gradient entry, over every seed, with dropout off. (Not
    weights, nor later steps: Adam moves a weight whose gradient is zero but for rounding,
    like the attention bias under the softmax, by its sign, which rounding can flip.)"""
    mask = torch.ones(BATCH_SIZE, POSITIONS, dtype=torch.bool)
    separate = made(unit, units, seeds, dropout=0.0)
    stacked_step, weights = stacked_stepper(made(unit, units, seeds, dropout=0.0))
    separate_step = separate_stepper(separate)
    [(features, labels)] = random_batches(seeds, 1)
    separate_step(features, mask, labels)
    stacked_step(features, mask, labels)
    largest = 0.0
    for index, model in enumerate(separate):
        used = [(name, p.grad) for name, p in model.named_parameters()
                if p.grad is not None]  # the absent-video vector takes no part
        scale = max(float(grad.abs().max()) for _, grad in used)
        largest = max(largest, *(float((weights[name].grad[index] - grad).abs().max()) / scale
                                 for name, grad in used))
    return largest


def speedup(unit: str, units: int, seeds: int, rounds: int, steps: int) -> dict[str, float]:
    """Milliseconds per step of all seeds, separate vs stacked, and the median round ratio."""
    mask = torch.ones(BATCH_SIZE, POSITIONS, dtype=torch.bool)
    batches = random_batches(seeds, steps)
    steppers = {"separate": separate_stepper(made(unit, units, seeds, DROPOUT)),
                "stacked": stacked_stepper(made(unit, units, seeds, DROPOUT))[0]}
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for round_index in range(rounds + 1):  # round 0 warms up
        for name, step in steppers.items():
            started = time.perf_counter()
            for features, labels in batches:
                step(features, mask, labels)
            if round_index:
                times[name].append(1000 * (time.perf_counter() - started) / steps)
    return {"separate_ms": round(statistics.median(times["separate"]), 3),
            "stacked_ms": round(statistics.median(times["stacked"]), 3),
            "speedup": round(statistics.median(
                s / b for s, b in zip(times["separate"], times["stacked"], strict=True)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="models per stacked step")
    parser.add_argument("--quick", action="store_true", help="one small configuration")
    parser.add_argument("--write-docs", action="store_true",
                        help=f"also write docs/{BATCHED_CHECK}")
    args = parser.parse_args()
    if args.seeds < 2:
        sys.exit("error: --seeds must be at least 2 (one model has nothing to batch with)")
    torch.set_num_threads(1)
    rounds, steps = (2, 5) if args.quick else (5, 40)
    runs = []
    for unit, units in QUICK_CONFIGS if args.quick else CONFIGS:
        runs.append({"config": f"{unit} N={units}", **speedup(unit, units, args.seeds, rounds,
                                                             steps),
                     "max_gradient_difference": largest_difference(unit, units, args.seeds)})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    result = {"machine": f"{machine_description(torch.device('cpu'))}, 1 thread",
              "seeds": args.seeds, "rounds": rounds, "steps_per_round": steps, "runs": runs}
    print(json.dumps(result, indent=2))
    if args.write_docs:
        write_json_atomic(Path("docs") / BATCHED_CHECK, result)


if __name__ == "__main__":
    main()
