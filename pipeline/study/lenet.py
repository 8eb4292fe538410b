"""The small LeNet that turns a Flash-MNIST frame into a 50-d local feature.

The paper's study uses "the 50-d penultimate layer of a small LeNet pre-trained to tell the 10
digits and 'noise' apart (11 classes) on noisy MNIST". Our layout (Caffe's LeNet with one extra
50-wide layer, so the penultimate layer is 50-d):

    conv 20 5x5 -> max-pool 2 -> conv 50 5x5 -> max-pool 2 -> fc 500 -> ReLU
    -> fc 50 -> ReLU  (= the local feature)  -> fc 11

The feature is taken *after* its ReLU, i.e. exactly what the 11-way classifier reads, so a
linear attention unit sees the same evidence the LeNet used to tell a digit from noise.
Pre-training reads only the digit pool's train images (the Flash-MNIST test videos show digits
it never saw) and is deterministic for a seed on one machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.datasets.generated.digits import DigitPools
from pipeline.datasets.generated.flash_mnist import NOISE_LABEL, noisy_digit_batches

FEATURE_DIM = 50
NUM_CLASSES = NOISE_LABEL + 1  # digits 0-9 and "noise"
EVAL_SEED_OFFSET = 7919  # the test-pool evaluation stream never equals the training stream


class LeNet(nn.Module):
    """forward(images (B, 28, 28) uint8 or float in 0-255) -> logits (B, 11);
    features(images) -> (B, 50) non-negative local features."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 20, 5),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(50 * 4 * 4, 500),
            nn.ReLU(),
            nn.Linear(500, FEATURE_DIM),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        scaled = images.float().div(255.0).unsqueeze(1)  # (B, 1, 28, 28) in [0, 1]
        return self.body(scaled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


@dataclass
class LeNetConfig:
    """Pre-training settings; recorded in the feature store so the features explain themselves."""

    steps: int = 400
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    noise_fraction: float = 1 / 11  # one class in eleven is pure noise
    eval_samples: int = 4096


@dataclass
class LeNetResult:
    """A pre-trained LeNet with its accuracy on noisy test-pool digits (11 classes)."""

    model: LeNet
    config: LeNetConfig
    test_accuracy: float
    train_accuracy: float  # over the last 100 training batches
    seconds: float
    source: str


def pretrain_lenet(
    pools: DigitPools, config: LeNetConfig, device: torch.device | str = "cpu",
    progress: bool = True,
) -> LeNetResult:
    """Train a LeNet on noisy train-pool digits + noise frames (Adam), then score it on
    noisy test-pool digits drawn the same way."""
    started = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model = LeNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    criterion = nn.CrossEntropyLoss()
    batches = noisy_digit_batches(pools, config.batch_size, config.seed, config.noise_fraction)
    recent_hits: list[float] = []
    model.train()
    bar = tqdm(range(config.steps), desc="LeNet pre-training", unit="step", disable=not progress)
    for _ in bar:
        images, labels = next(batches)
        images_t = torch.from_numpy(images).to(device)
        labels_t = torch.from_numpy(labels).to(device)
        logits = model(images_t)
        loss = criterion(logits, labels_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent_hits = [*recent_hits[-99:], float((logits.argmax(1) == labels_t).float().mean())]
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{np.mean(recent_hits):.3f}")
    test_accuracy = evaluate_lenet(model, pools, config, device)
    return LeNetResult(model.eval(), config, test_accuracy, float(np.mean(recent_hits or [0.0])),
                       time.perf_counter() - started, pools.source)


@torch.inference_mode()
def evaluate_lenet(
    model: LeNet, pools: DigitPools, config: LeNetConfig, device: torch.device
) -> float:
    """11-class accuracy on noisy *test-pool* digits (and noise frames) the LeNet never saw."""
    model.eval()
    test_only = dataclasses.replace(pools, train=pools.test)
    batches = noisy_digit_batches(
        test_only, config.batch_size, config.seed + EVAL_SEED_OFFSET, config.noise_fraction
    )
    hits = seen = 0
    for images, labels in itertools.islice(batches, max(1, config.eval_samples
                                                        // config.batch_size)):
        predicted = model(torch.from_numpy(images).to(device)).argmax(1).cpu().numpy()
        hits += int((predicted == labels).sum())
        seen += len(labels)
    return hits / seen


def state_sha256(model: nn.Module) -> str:
    """Fingerprint of the weights, recorded in the store config (same weights, same features)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def save_lenet(path: Path, result: LeNetResult) -> None:
    """Weights plus the facts docs/reproduction.md reports, loadable with weights_only=True."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
            "config": dataclasses.asdict(result.config),
            "test_accuracy": result.test_accuracy,
            "train_accuracy": result.train_accuracy,
            "seconds": result.seconds,
            "source": result.source,
        },
        path,
    )


def load_lenet(path: Path) -> LeNetResult:
    """Reload what `save_lenet` wrote (CPU; move the model where it is needed)."""
    content: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    model = LeNet()
    model.load_state_dict(content["state_dict"])
    return LeNetResult(model.eval(), LeNetConfig(**content["config"]), content["test_accuracy"],
                       content["train_accuracy"], content["seconds"], content["source"])
