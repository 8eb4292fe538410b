"""`cli.py finetune`: one modality's backbone trained TSN-style on one split's training videos.

The order of work: every user mistake is found before anything is computed (modality, split,
no training videos, a weights file that does not fit the architecture: `build_backbone`
loads it strictly), then the snippet cache is filled (resumable), then the epochs run
(resumable), then the outputs are written. Rerunning the same command after a kill continues;
after a finished run it returns the record without training again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.backbones.image import ImageBackbone
from extract.backbones.registry import build_backbone
from extract.device import resolve_device
from extract.errors import UserError
from pipeline.atomic import json_text
from pipeline.datasets.manifest import Manifest, load_manifest
from pipeline.features.extractor import decode_limits, pick_evenly
from pipeline.finetune.factors import factor_accuracy
from pipeline.finetune.loop import Inputs, run_epochs
from pipeline.finetune.outputs import RECORD_NAME, write_outputs
from pipeline.finetune.settings import FinetuneSettings
from pipeline.finetune.snippets import build_snippets
from pipeline.finetune.tsn import TSN
from pipeline.profiles import default_profile_for, load_profile
from pipeline.store.format import Split
from pipeline.training_state import LAST_NAME


@dataclass
class Parts:
    """The split's videos that the run reads: (id, file, label) for training and validation."""

    train: list[tuple[str, Path, int]]
    val: list[tuple[str, Path, int]]


def split_parts(manifest: Manifest, split: int, max_videos: int | None = None) -> Parts:
    """Present videos of `split` by role (at most `max_videos` of each, spread evenly over
    the list, which is sorted by class: a quick trial); one line when there are no training
    videos."""
    if manifest.task != "single":
        raise UserError(f"{manifest.dataset}: finetune needs single-label classes (TSN's "
                        "softmax); this dataset is multi-label")
    if not 1 <= split <= len(manifest.split_names):
        raise UserError(f"{manifest.dataset} has splits 1..{len(manifest.split_names)}, "
                        f"not {split}")
    parts: dict[int, list[tuple[str, Path, int]]] = {Split.TRAIN: [], Split.TEST: []}
    for entry in manifest.existing():
        role = entry.splits[split - 1]
        if role in parts and entry.label >= 0:
            parts[role].append((entry.id, Path(manifest.path(entry)), int(entry.label)))
    if not parts[Split.TRAIN]:
        raise UserError(f"{manifest.dataset} at {manifest.root}: split {split} has no training "
                        "videos on disk (check the trainlist files and `cli.py data validate`)")
    if max_videos is not None:
        parts = {role: [videos[i] for i in pick_evenly(len(videos), max_videos)]
                 for role, videos in parts.items()}
    return Parts(parts[Split.TRAIN], parts[Split.TEST])


def base_backbone(profile: dict[str, Any], modality: str, device: Any) -> ImageBackbone:
    """The profile's backbone for `modality`, built as `features` builds it."""
    if modality not in profile["modalities"]:
        raise UserError(f"the profile has no {modality} modality to fine-tune (it has "
                        f"{', '.join(profile['modalities']) or 'none'})")
    settings = profile["modalities"][modality]
    spec = dict(settings["backbone"])
    if spec.get("name", "").startswith("mmaction2:"):
        raise UserError("finetune starts from efficientnet_lite0, torchvision: or timm: "
                        "networks; an MMAction2 TSN checkpoint is already trained on video")
    if modality == "flow":
        spec["channels"] = 2 * (int(settings["frames_per_stack"]) - 1)
    backbone = build_backbone(spec, modality, device)
    assert isinstance(backbone, ImageBackbone)
    return backbone


def run_finetune(*, dataset: str, root: Path, modality: str, out: Path,
                 profile: str | Path | None = None, kind: str | None = None,
                 splits_dir: Path | None = None, settings: FinetuneSettings | None = None,
                 max_videos: int | None = None, device: str = "auto", progress: bool = True
                 ) -> dict[str, Any]:
    """Fine-tune, resuming a killed run in `out`; the record finetune.json holds."""
    settings = settings or FinetuneSettings(modality=modality)
    loaded = load_profile(profile or default_profile_for(dataset))
    manifest = load_manifest(kind or loaded["dataset"]["kind"], root, splits_dir)
    manifest.dataset = dataset
    parts = split_parts(manifest, settings.split, max_videos)
    torch_device = resolve_device(device)
    backbone = base_backbone(loaded, modality, torch_device)
    out = Path(out)
    identity = json.loads(json_text({  # plain JSON values: compared with the saved record
        "settings": {**settings.effective(), "epochs": None}, "base": backbone.config(),
        "dataset": dataset, "train": [vid for vid, _, _ in parts.train],
        "val": [vid for vid, _, _ in parts.val]}))
    finished = out / RECORD_NAME
    if finished.exists() and not (out / LAST_NAME).exists():
        record = json.loads(finished.read_text())
        if record.get("identity") == identity and record.get("epochs") == settings.epochs:
            return record
    out.mkdir(parents=True, exist_ok=True)
    modality_settings = loaded["modalities"][modality]
    videos = [(vid, path) for vid, path, _ in parts.train + parts.val]
    build_started = time.perf_counter()
    snippets = build_snippets(out / "snippets.zarr", videos, modality, modality_settings,
                              decode_limits(loaded["limits"]), torch_device, progress)
    build_s = time.perf_counter() - build_started
    read_started = time.perf_counter()
    probe = np.flatnonzero(snippets.usable)[:16]
    for row in probe:  # what reading a video's snippets back costs (the cached path)
        snippets.data[int(row)]
    read_s = (time.perf_counter() - read_started) / max(len(probe), 1)
    labels = np.array([label for _, _, label in parts.train + parts.val], dtype=np.int64)
    rows = np.arange(len(videos))
    train_rows = rows[: len(parts.train)][snippets.usable[: len(parts.train)]]
    val_rows = rows[len(parts.train):][snippets.usable[len(parts.train):]]
    if len(train_rows) == 0:
        raise UserError(f"none of the {len(parts.train)} training videos could be decoded: "
                        + "; ".join(snippets.errors[:2]))
    crop = modality_settings.get("crop") if modality == "rgb" else None
    size = (int(crop), int(crop)) if crop else tuple(snippets.data.shape[-2:])
    inputs = Inputs(snippets.data, train_rows, labels[train_rows], val_rows, labels[val_rows],
                    backbone.to_nchw, (size[0], size[0]) if modality == "flow" else size,
                    (int(crop), int(crop)) if crop else None, modality)
    torch.manual_seed(settings.seed)  # the head's initialisation and dropout: reproducible
    model = TSN(backbone.network, backbone.dim, len(manifest.classes), settings.head_dropout,
                settings.partial_bn)

    def evaluate(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        top1 = float(np.mean(scores.argmax(axis=1) == truth)) if len(truth) else float("nan")
        return {"val_top1": top1, **factor_accuracy(scores, truth, manifest.classes)}

    history = run_epochs(model, inputs, settings, out, identity, torch_device, evaluate,
                         progress)
    record = write_outputs(out, model.backbone.eval(), {
        "dataset": dataset, "split": settings.split, "modality": modality,
        "epochs": settings.epochs, "classes": list(manifest.classes),
        "base": backbone.config(), "settings": settings.effective(),
        "train_videos": int(len(train_rows)), "val_videos": int(len(val_rows)),
        "skipped_videos": snippets.errors, "history": history,
        "val_top1": [epoch["val_top1"] for epoch in history],
        "timing": {"snippets_s_per_video": snippets.seconds_per_video,
                   "cached_read_s_per_video": read_s,
                   "snippets_build_s_this_run": build_s,
                   "train_s_per_epoch": float(np.mean([e["train_s"] for e in history]))},
        "identity": identity,
    })
    (out / LAST_NAME).unlink(missing_ok=True)  # finished: the record and weights remain
    return record
