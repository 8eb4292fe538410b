"""Fine-tuning settings, with TSN's recipe as the defaults and every default declared here.

TSN (Wang et al. 2016, and MMAction2's tsn_r50 configs): K = 3 segments, one snippet each,
SGD with momentum 0.9 and weight decay 5e-4, learning rate 0.001 for RGB and 0.005 for flow
divided by 10 at fixed epochs, dropout 0.8 (RGB) / 0.7 (flow) before the head, gradient norm
clipped at 40, partial BN. What differs, and why: a batch of 8 videos instead of 256 (a CPU
holds that; the small data set of a toy or UCF101 split gives enough steps per epoch) and one
step decay at two thirds of the epochs instead of TSN's iteration counts (epochs scale with
the data set; TSN's 80 epochs of UCF101 are `--epochs 80`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from extract.errors import UserError

TSN_LR = {"rgb": 0.001, "flow": 0.005}
TSN_DROPOUT = {"rgb": 0.8, "flow": 0.7}


@dataclass(frozen=True)
class FinetuneSettings:
    """What a fine-tuning run computes; a resumed run must have the same (`resumable`)."""

    modality: str
    split: int = 1
    epochs: int = 6
    segments: int = 3
    batch_size: int = 8
    lr: float | None = None  # None: TSN's for the modality
    lr_step: int | None = None  # epoch after which the rate drops x0.1 (None: 2/3 of epochs)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float | None = None  # None: TSN's for the modality
    clip_grad: float = 40.0
    partial_bn: bool = True
    # TSN's horizontal flips assume a mirrored video shows the same class; off where the
    # class is the direction (the toy set's Left/Right: a flip would swap the labels).
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.modality not in TSN_LR:
            raise UserError(f"finetune trains an rgb or flow backbone, not {self.modality!r} "
                            "(audio features have no trainable image network here)")
        for name in ("epochs", "segments", "batch_size", "split"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"finetune: {name} must be at least 1")

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else TSN_LR[self.modality])

    @property
    def head_dropout(self) -> float:
        return float(self.dropout if self.dropout is not None else TSN_DROPOUT[self.modality])

    @property
    def decay_epoch(self) -> int:
        return int(self.lr_step if self.lr_step is not None else max(1, 2 * self.epochs // 3))

    def resumable(self) -> dict[str, Any]:
        """The settings that decide every update (all but the number of epochs to run)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "epochs"}

    def effective(self) -> dict[str, Any]:
        """Every setting with its defaults resolved, as the record states them."""
        return {**dataclasses.asdict(self), "lr": self.learning_rate,
                "dropout": self.head_dropout, "lr_step": self.decay_epoch}
