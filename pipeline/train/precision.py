"""The precisions a training forward pass may run in, defined once for training and probing.

fp32: everything in float32. bf16: the whole forward pass under bf16 autocast. bf16_head: only
the classifier head under it. Why the last: with a large cluster the head's matmul (N x D
inputs to every class) is most of a step, and on a CPU with AVX512-BF16 it runs about 2.5x as
fast in bf16 (bench/flash_precision.py), while the attention, whose small ops gain nothing
and whose two-layer scorer lost accuracy under bf16, stays in float32. Weights, optimiser and
validation are float32 in all three.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from model.network import AttentionClusterNet, ModalityInput

PRECISIONS = ("fp32", "bf16", "bf16_head")


def forward_in(model: AttentionClusterNet, inputs: dict[str, ModalityInput], precision: str,
               device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The network's forward pass (logits, attention weights) in `precision`."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        encoded, attentions = model.encode(inputs)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision != "fp32"):
        return model.classify(encoded), attentions


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Float math with denormal numbers (below 1.2e-38) taken as zero while the block runs, then
    torch's default again.

    Why: late in a long training run, peaky attention softmaxes and decayed gradients make such
    numbers, and x86 CPUs handle them in slow microcode: the Flash-MNIST grid's two-layer N=128
    ran 46-57 ms per step at epoch 91 against 30 ms flushed (one thread, its own last.pt, the
    same 150 batches). Numbers that small change no result."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
