"""How much of Flash-MNIST the LeNet's features already solve, in numbers.

Why: the digits stand-in (scikit-learn's 1,797 digits) may make the task easier or harder
than MNIST, and only measurements say which. Over the test videos, the LeNet's own 11-class
head (fc 50->11, applied to the stored features) labels each frame; we report how often it is
right on digit frames and on noise frames, and the top-1 of a rule with no training at all:
a video's class is the set of digits its frames are labelled with (chance 1/1024). The same
numbers measured with `--mnist-dir` put MNIST's difficulty beside ours.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.datasets.generated.flash_mnist import DIGITS, NOISE, NOISE_LABEL
from pipeline.study.lenet import LeNet


@torch.inference_mode()
def frame_labels(model: LeNet, features: np.ndarray) -> np.ndarray:
    """(V, L, 50) stored features -> (V, L) the LeNet head's label (0-9, or NOISE_LABEL)."""
    head = model.fc2.cpu().eval()
    return head(torch.from_numpy(features.astype(np.float32))).argmax(-1).numpy()


def read_classes(labels: np.ndarray) -> np.ndarray:
    """(V, L) frame labels -> (V,) class id: bit d set when some frame is labelled digit d."""
    present = (labels[..., None] == np.arange(DIGITS)).any(axis=1)  # (V, 10)
    return (present * (1 << np.arange(DIGITS))).sum(axis=1)


def frame_reading(model: LeNet, features: np.ndarray, frame_digit: np.ndarray,
                  labels: np.ndarray) -> dict[str, float]:
    """The LeNet's accuracy on the test videos' digit and noise frames, and the top-1 of
    reading each test video's class off its frame labels (flash_features.test_videos)."""
    predicted = frame_labels(model, features)
    is_digit = frame_digit != NOISE
    return {
        "digit_frame_accuracy": float((predicted == frame_digit)[is_digit].mean()),
        "noise_frame_accuracy": float((predicted == NOISE_LABEL)[~is_digit].mean()),
        "frames_read_top1": float((read_classes(predicted) == labels).mean()),
    }
