"""`classify`: videos -> top-k classes, through exactly the extraction a checkpoint records.

A checkpoint holds the full extraction config of every modality it was trained on (sampling,
flow parameters, backbone with its weights checksum), so the features computed here are the
ones the feature store held for the same video. Models (backbones and the network) are loaded
once and shared by every video of a call.

Failure rules (docs/classify.md):
- a modality that fails for a video (flow of a one-frame video, a broken audio track) or is
  absent (no audio track) goes to the network as not present; the result says which were used;
- a video whose frames cannot be read (missing, not a video, empty, corrupt, truncated beyond
  the sampled positions) is a video-level failure: with one video a UserError, with several a
  line on stderr, an "error" in its result, and the others go on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from extract.device import resolve_device
from extract.errors import UserError
from model.network import AttentionClusterNet, probabilities
from pipeline.features.extractor import VideoFeatureExtractor
from pipeline.store.format import COMPLETE, Status
from pipeline.store.rows import pad_row
from pipeline.train.checkpoint import (
    extraction_difference,
    load_checkpoint,
    model_from_checkpoint,
)
from pipeline.train.config import torch_threads
from pipeline.train.runs import newest_checkpoint


@dataclass
class Classifier:
    """Everything loaded once and shared by the videos of one call."""

    checkpoint: Path
    content: dict[str, Any]
    model: AttentionClusterNet
    extractor: VideoFeatureExtractor
    device: torch.device
    lengths: dict[str, int]  # modality -> L, the positions the store padded to
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, accumulated

    @property
    def modalities(self) -> list[str]:
        return list(self.content["model_config"]["modalities"])

    @property
    def classes(self) -> list[str]:
        return [str(name) for name in self.content["classes"]]

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of a block to `timings[stage]` (bench/classify.py reads these)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.timings[stage] = self.timings.get(stage, 0.0) + elapsed


@dataclass
class VideoFeatures:
    """One video's extraction results per modality and whether it failed as a whole."""

    results: dict[str, dict[str, Any]]
    error: str | None = None


def load_classifier(checkpoint: str | Path, device: str = "auto") -> Classifier:
    """Load a checkpoint's network and rebuild its feature extraction, on `device`."""
    checkpoint = Path(checkpoint)
    content = load_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    model = model_from_checkpoint(content, torch_device)
    recorded = {name: content["modalities"].get(name) or {}
                for name in content["model_config"]["modalities"]}
    extractor = VideoFeatureExtractor.from_record(recorded, torch_device)
    # The rebuild checks each weights file's sha256; this also catches what it cannot: another
    # PCA file, or software that would preprocess or sample differently from the record.
    difference = extraction_difference(
        content, {name: extractor.config(name) for name in recorded}, str(checkpoint))
    if difference:
        raise UserError(
            f"{checkpoint}: this installation would extract features differently from those "
            f"the model was trained on: {difference} (checkpoint vs here); use the software "
            "and weights files the checkpoint records, or retrain"
        )
    lengths = {}
    for name, (width, _units) in content["model_config"]["modalities"].items():
        if extractor.dim(name) != int(width):
            raise UserError(
                f"{checkpoint}: the rebuilt {name} backbone gives {extractor.dim(name)}-d "
                f"features, the model expects {width}"
            )
        shape = (content.get("feature_shapes") or {}).get(name)
        lengths[name] = int(shape[0]) if shape else int(extractor.settings[name]["positions"])
    return Classifier(checkpoint, content, model, extractor, torch_device, lengths)


def with_file_name(path: Path, error: str) -> str:
    """Errors from the decoders name the file; other exceptions get the name put in front."""
    return error if str(path) in error or path.name in error else f"{path}: {error}"


def extract_video(classifier: Classifier, path: Path) -> VideoFeatures:
    """Features of every modality; a video-level error when its frames cannot be read.

    RGB is extracted first: it needs only K decodable frames, so when it fails the file is not
    usable as a video (missing, not a video, corrupt, truncated) and the rest is skipped. A
    model without RGB fails a video only when no modality at all could be extracted.
    """
    modalities = classifier.modalities
    results: dict[str, dict[str, Any]] = {}
    first = ["rgb"] if "rgb" in modalities else modalities
    for name in first:
        with classifier.timed(name):
            results.update(classifier.extractor.extract(path, [name]))
    if "rgb" in results and results["rgb"]["status"] != Status.DONE:
        return VideoFeatures(results, with_file_name(path, results["rgb"]["error"]))
    for name in modalities:
        if name not in results:
            with classifier.timed(name):
                results.update(classifier.extractor.extract(path, [name]))
    if not any(result["status"] == Status.DONE for result in results.values()):
        errors = [r["error"] for r in results.values() if r["error"]]
        reason = errors[0] if errors else f"no {' or '.join(modalities)} to classify (absent)"
        return VideoFeatures(results, with_file_name(path, reason))
    return VideoFeatures(results)


def model_inputs(results: Mapping[str, Mapping[str, Any]], lengths: Mapping[str, int],
                 widths: Mapping[str, int], device: torch.device
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A batch of one video, laid out as its store row would be (`pad_row`): present only
    for modalities that are done."""
    inputs = {}
    for name, length in lengths.items():
        row = pad_row(results[name], length, widths[name])
        inputs[name] = (
            torch.from_numpy(row.features[None]).to(device).float(),
            torch.from_numpy(row.mask[None]).to(device),
            torch.tensor([row.status == Status.DONE], device=device),
        )
    return inputs


def top_classes(scores: np.ndarray, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The k best classes, best first, as {"label", "prob"}."""
    order = np.argsort(-scores, kind="stable")[: max(1, min(k, len(classes)))]
    return [{"label": classes[i], "prob": float(scores[i])} for i in order]


@torch.inference_mode()
def run_model(classifier: Classifier, features: VideoFeatures
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class scores (C,) and each modality's attention weights (N, L) for one video."""
    widths = {m: int(v[0]) for m, v in classifier.content["model_config"]["modalities"].items()}
    inputs = model_inputs(features.results, classifier.lengths, widths, classifier.device)
    logits, attention = classifier.model(inputs)
    scores = probabilities(logits, classifier.content["task"])[0].float().cpu().numpy()
    return scores, {m: a[0].float().cpu().numpy() for m, a in attention.items()}


@torch_threads()  # AC_TORCH_THREADS, else one thread (extraction runs at one anyway)
def classify_one(classifier: Classifier, path: Path, top_k: int = 5,
                 explain: Path | None = None) -> dict[str, Any]:
    """One video's result dict (see classify_videos); raises nothing for a bad video."""
    features = extract_video(classifier, path)
    statuses = {m: Status(r["status"]).label for m, r in features.results.items()}
    if features.error is not None:
        return {"video": str(path), "top": [], "modalities": statuses, "error": features.error}
    with classifier.timed("model"):
        scores, attention = run_model(classifier, features)
    result: dict[str, Any] = {
        "video": str(path),
        "top": top_classes(scores, classifier.classes, top_k),
        "modalities": statuses,
    }
    problems = {m: r["error"] for m, r in features.results.items() if r["status"] not in
                COMPLETE}
    if problems:
        result["modality_errors"] = problems
    if explain is not None:
        from pipeline.inference.explain import (
            explain_video,  # matplotlib only when a picture is wanted
        )

        with classifier.timed("explain"):
            explain_video(explain, path, result, features.results, attention,
                          classifier.extractor)
        result["explanation"] = str(explain)
    return result


def explanation_paths(explain: Path, count: int) -> list[Path]:
    """One picture per video: the given path for one video, `name-1.png`... for several."""
    if count == 1:
        return [explain]
    return [explain.with_name(f"{explain.stem}-{i}{explain.suffix or '.png'}")
            for i in range(1, count + 1)]


def report_to_stderr(message: str) -> None:
    tqdm.write(f"error: {message}", file=sys.stderr)


def classify_videos(
    videos: Sequence[str | Path],
    checkpoint: str | Path | None = None,
    top_k: int = 5,
    device: str = "auto",
    explain: Path | None = None,
    progress: bool = True,
    dataset: str = "toy",
    on_error: Callable[[str], None] = report_to_stderr,
) -> list[dict[str, Any]]:
    """Classify videos with one checkpoint (default: the newest of `dataset`).

    Returns per video {"video", "top": [{"label", "prob"}...], "modalities": {m: status}} plus
    "modality_errors" {m: error} when a modality failed, "explanation" (picture path) with
    `explain`, and "error" for a video that could not be read. With ONE video, that failure is
    raised as a UserError; with several, `on_error` gets the line (stderr by default) and the
    others go on: the caller exits non-zero when any result has "error".
    """
    if not videos:
        raise UserError("give at least one video to classify")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    paths = [Path(v) for v in videos]
    chosen = Path(checkpoint) if checkpoint is not None else newest_checkpoint(dataset)
    classifier = load_classifier(chosen, device)
    pictures = explanation_paths(Path(explain), len(paths)) if explain else [None] * len(paths)
    results = []
    bar = tqdm(paths, desc="videos", unit="video", disable=not progress or len(paths) < 2)
    for path, picture in zip(bar, pictures, strict=True):
        result = classify_one(classifier, path, top_k, picture)
        if "error" in result:
            if len(paths) == 1:
                raise UserError(result["error"])
            on_error(result["error"])
        results.append(result)
    return results


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Top-k classes with probabilities, one block per video, for a terminal."""
    blocks = []
    for result in results:
        lines = [str(result["video"])]
        if "error" in result:
            lines.append(f"  error: {result['error']}")
            blocks.append("\n".join(lines))
            continue
        width = max(len(entry["label"]) for entry in result["top"])
        for rank, entry in enumerate(result["top"], start=1):
            bar = "#" * round(20 * entry["prob"])
            lines.append(f"  {rank:>2}. {entry['label']:<{width}}  {entry['prob']:6.1%}  {bar}")
        done = Status.DONE.label
        used = [m for m, s in result["modalities"].items() if s == done]
        unused = [f"{m} {s}" for m, s in result["modalities"].items() if s != done]
        note = f"  modalities: {', '.join(used)}"
        if unused:
            note += f" (not used: {', '.join(unused)})"
        lines.append(note)
        if "explanation" in result:
            lines.append(f"  explanation: {result['explanation']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
