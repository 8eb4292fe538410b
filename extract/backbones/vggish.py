"""VGGish audio embeddings from the weights released with the PyTorch port (PyPI `torchvggish`).

The network mirrors that port's state dict layout (`features.{0,3,6,8,11,13}`, `embeddings.
{0,2,4}`) so `vggish-10086976.pth` loads strictly from a local path; nothing is downloaded here.
Optional post-processing is AudioSet's PCA (whitening) and 8-bit quantisation, read from
`vggish_pca_params-970ea276.pth`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from extract.errors import UserError
from extract.logmel import LOG_MEL_CONFIG, N_MELS, PATCH_FRAMES, as_patch_tensor
from extract.weights import file_sha256, load_weights_into

WEIGHTS_NAME = "vggish-10086976.pth"
PCA_NAME = "vggish_pca_params-970ea276.pth"
RELEASE_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
EMBEDDING_DIM = 128
QUANT_MIN, QUANT_MAX = -2.0, 2.0
# Conv widths, "M" = 2x2 max-pool; the indices of this Sequential are the state dict's.
LAYOUT: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGGish(nn.Module):
    """VGG-like CNN: 4 conv blocks over a (96 frames x 64 bands) patch, then 3 FC -> 128-d."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for item in LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM),
            nn.ReLU(inplace=True),  # kept, as in the port the weights come from
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(P, 96, 64) log-mel patches -> (P, 128) embeddings."""
        x = self.features(patches.unsqueeze(1))
        # Flatten in TensorFlow's (H, W, C) order: the FC weights were converted from TF.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(x)


def default_locations(filename: str) -> list[Path]:
    """Where a released file is looked for when the spec gives no path."""
    return [Path("weights") / filename, Path(torch.hub.get_dir()) / "checkpoints" / filename]


def locate(filename: str, given: str | os.PathLike[str] | None) -> Path:
    """The user's path, else the first default location holding the file, else a clear error."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise UserError(f"{path}: VGGish file not found")
        return path
    candidates = default_locations(filename)
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(
        f"VGGish file {filename} not found; download {RELEASE_URL}{filename} and put it in "
        f"{candidates[0].parent}/ or {candidates[1].parent}/ (or give its path in the profile)"
    )


def load_vggish(weights_file: str | os.PathLike[str] | None = None) -> tuple[VGGish, Path]:
    """VGGish in eval mode with the released weights read strictly from a local file."""
    path = locate(WEIGHTS_NAME, weights_file)
    with torch.device("meta"):  # skip the random init of ~72M parameters the file replaces
        model = VGGish()
    load_weights_into(model, path, assign=True)
    return model.eval(), path


_NUMPY_GLOBALS = [
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    np.dtypes.Float32DType,
    np.dtypes.Float64DType,
]


class PCAPostprocessor:
    """AudioSet's PCA/whitening, then optionally clip to [-2, 2] and quantise to 0..255."""

    def __init__(self, path: str | os.PathLike[str], quantize: bool, device: torch.device):
        try:  # the released file may hold numpy arrays: allow exactly those, nothing executable
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                params = torch.load(path, map_location="cpu", weights_only=True)
            vectors = torch.as_tensor(np.asarray(params["pca_eigen_vectors"]), dtype=torch.float32)
            means = torch.as_tensor(np.asarray(params["pca_means"]), dtype=torch.float32)
        except Exception as exc:  # unreadable file or missing keys: the file's fault
            raise UserError(
                f"{path}: not a VGGish PCA file (needs pca_eigen_vectors, pca_means): {exc}"
            ) from exc
        means = means.reshape(-1)
        if tuple(vectors.shape) != (EMBEDDING_DIM, EMBEDDING_DIM) or means.numel() != EMBEDDING_DIM:
            raise UserError(
                f"{path}: PCA shapes {tuple(vectors.shape)} / {tuple(means.shape)}, expected "
                f"({EMBEDDING_DIM}, {EMBEDDING_DIM}) / ({EMBEDDING_DIM},)"
            )
        self.vectors, self.means = vectors.to(device), means.to(device)
        self.quantize = quantize

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        projected = (embeddings - self.means) @ self.vectors.T
        if not self.quantize:
            return projected
        clipped = projected.clamp(QUANT_MIN, QUANT_MAX)
        return torch.round((clipped - QUANT_MIN) * (255.0 / (QUANT_MAX - QUANT_MIN)))


class VGGishBackbone:
    """Audio backbone: log-mel patches (P, 96, 64) -> (P, 128) VGGish embeddings."""

    name = "vggish"
    dim = EMBEDDING_DIM
    in_channels = 1
    input_size = (PATCH_FRAMES, N_MELS)

    def __init__(
        self,
        spec: dict[str, Any],
        device: torch.device,
        weights_file: str | os.PathLike[str] | None = None,
        pca_file: str | os.PathLike[str] | None = None,
        quantize: bool = False,
    ):
        self.device = torch.device(device)
        model, path = load_vggish(weights_file)
        self.network = model.to(self.device)
        self._record: dict[str, Any] = {
            "spec": dict(spec),
            "modality": "audio",
            "dim": self.dim,
            "weights": "VGGish (AudioSet), torchvggish release",
            "weights_file": str(path.absolute()),
            "sha256": file_sha256(path),
            "log_mel": dict(LOG_MEL_CONFIG),
            "postprocess": "none",
        }
        self.postprocess: PCAPostprocessor | None = None
        if pca_file is not None:
            self.postprocess = PCAPostprocessor(pca_file, quantize, self.device)
            self._record.update(
                postprocess="pca + 8-bit quantisation (0..255)" if quantize else "pca",
                pca_file=str(Path(pca_file).absolute()),
                pca_sha256=file_sha256(pca_file),
            )

    def config(self) -> dict[str, Any]:
        return dict(self._record)

    @torch.inference_mode()
    def __call__(self, patches: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = as_patch_tensor(patches, self.device)
        if len(x) == 0:
            return torch.zeros(0, self.dim)
        embeddings = self.network(x)
        if self.postprocess is not None:
            embeddings = self.postprocess(embeddings)
        return embeddings.float().cpu()


VGGISH_SPEC_KEYS = frozenset({"name", "weights_file", "pca", "pca_file", "quantize"})


def build_vggish(spec: dict[str, Any], device: torch.device) -> VGGishBackbone:
    """`{name: vggish, weights_file?, pca: bool, pca_file?, quantize: bool}` -> backbone."""
    unknown = set(spec) - VGGISH_SPEC_KEYS
    if unknown:
        raise UserError(
            f"audio backbone 'vggish': unknown option(s) {sorted(unknown)} "
            f"(known: {sorted(VGGISH_SPEC_KEYS)})"
        )
    use_pca = bool(spec.get("pca", False)) or bool(spec.get("pca_file"))
    if spec.get("quantize") and not use_pca:
        raise UserError("audio backbone 'vggish': quantize needs pca: true")
    pca_file = locate(PCA_NAME, spec.get("pca_file")) if use_pca else None
    return VGGishBackbone(
        spec, device, spec.get("weights_file"), pca_file, bool(spec.get("quantize", False))
    )
