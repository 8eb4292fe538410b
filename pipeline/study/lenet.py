"""The authors' LeNet that turns a Flash-MNIST frame into a 50-d local feature.

As in longxiang92/Flash-MNIST (main_mnist_noisy.py, main_get_feature.py):

    (x / 255 - 0.1307) / 0.3081 -> conv 1->10 5x5 -> max-pool 2 -> ReLU
    -> conv 10->20 5x5 -> Dropout2d -> max-pool 2 -> ReLU -> fc 320->50 -> ReLU -> dropout
    -> log_softmax over the 50 values  (= the local feature)  -> fc 50->11 (pre-training only)

pre-trained for one epoch (Adam 1e-3, batch 64) to tell the ten digits and "noise" apart on
the authors' noisy set (pipeline/datasets/generated/flash_mnist.py: noisy_digit_epoch). It
reads only the train pool, so Flash-MNIST test videos show digits it never saw, and it is
deterministic for a seed on one machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch spelling)
from torch import nn
from tqdm import tqdm

from pipeline.datasets.generated.digits import DigitPools
from pipeline.datasets.generated.flash_mnist import NOISE_LABEL, noisy_digit_epoch

FEATURE_DIM = 50
NUM_CLASSES = NOISE_LABEL + 1  # digits 0-9 and "noise"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the authors' input normalisation
EVAL_SEED_OFFSET = 7919  # the test set's noise never equals the training set's


class LeNet(nn.Module):
    """forward(images (B, 28, 28) uint8 or float in 0-255) -> 11 logits;
    features(images) -> (B, 50) log-probabilities, the local feature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().div(255.0).unsqueeze(1) - MNIST_MEAN) / MNIST_STD
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(x, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(images))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class LeNetConfig:
    """Pre-training settings; recorded in the feature store so the features explain themselves.

    Defaults: the authors' set of 300,000 digit images (MNIST's 60,000 train digits x 5) and
    30,000 noise frames, one epoch; with a smaller digit pool each image recurs more often."""

    epochs: int = 1
    digit_images: int = 300_000
    noise_images: int = 30_000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


@dataclass
class LeNetResult:
    """A pre-trained LeNet with its 11-class accuracy on the noisy test set."""

    model: LeNet
    config: LeNetConfig
    test_accuracy: float
    train_accuracy: float  # over the last epoch
    seconds: float
    source: str


def pretrain_lenet(
    pools: DigitPools, config: LeNetConfig, device: torch.device | str = "cpu",
    progress: bool = True,
) -> LeNetResult:
    """Train a LeNet on the noisy train-pool set, then score it on the noisy test set."""
    started = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model = LeNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    total = config.digit_images + config.noise_images
    hits = seen = 0
    model.train()
    for epoch in range(config.epochs):
        hits = seen = 0
        batches = noisy_digit_epoch(pools, "train", config.digit_images, config.noise_images,
                                    config.batch_size, config.seed + epoch)
        bar = tqdm(batches, total=-(-total // config.batch_size), unit="batch",
                   desc=f"LeNet pre-training, epoch {epoch + 1}/{config.epochs}",
                   disable=not progress)
        for images, labels in bar:
            labels_t = torch.from_numpy(labels).to(device)
            logits = model(torch.from_numpy(images).to(device))
            loss = F.cross_entropy(logits, labels_t)  # = NLL of log_softmax, as the authors
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            hits += int((logits.argmax(1) == labels_t).sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{hits / seen:.3f}")
    test_accuracy = evaluate_lenet(model, pools, config, device)
    return LeNetResult(model.eval(), config, test_accuracy, hits / max(seen, 1),
                       time.perf_counter() - started, pools.source)


@torch.inference_mode()
def evaluate_lenet(
    model: LeNet, pools: DigitPools, config: LeNetConfig, device: torch.device
) -> float:
    """11-class accuracy on the authors' test set: every test-pool digit once on fresh noise,
    plus a tenth as many noise frames."""
    model.eval()
    digits = len(pools.test.labels)
    batches = noisy_digit_epoch(pools, "test", digits, max(1, digits // 10), 1024,
                                config.seed + EVAL_SEED_OFFSET)
    hits = seen = 0
    for images, labels in batches:
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


def load_lenet(path: Path) -> LeNetResult | None:
    """Reload what `save_lenet` wrote (CPU); None for a file of another LeNet or layout."""
    content: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    model = LeNet()
    try:
        model.load_state_dict(content["state_dict"])
        config = LeNetConfig(**content["config"])
    except (KeyError, TypeError, RuntimeError):  # an earlier LeNet: pre-train again
        return None
    return LeNetResult(model.eval(), config, content["test_accuracy"],
                       content["train_accuracy"], content["seconds"], content["source"])
