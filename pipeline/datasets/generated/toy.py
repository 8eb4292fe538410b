"""The `toy` dataset: a few hundred tiny clips whose class needs all three modalities.

Why it exists: a fresh clone must run the whole pipeline offline in minutes, and the result must
show that each modality contributes. A class is (appearance, motion, sound):
- appearance: the colour of the moving discs, red or blue, chosen with the same BT.601 luma, so
  the grayscale frames given to optical flow look identical for both colours;
- motion: the discs drift left or right, wrapping around the frame edges from a uniformly random
  phase, so the disc positions in any single frame follow the same (uniform) law for both
  directions and only motion between frames reveals the direction;
- sound: a low or a high beeping tone, or no audio track at all ("silent", as in half of UCF101).
2 x 2 x 3 = 12 classes: RGB alone can reach 1/6 accuracy, flow alone 1/6, audio alone 1/4, and
only the three together can reach 100%.

Nuisances (frame size, frame rate, background colour and texture, sensor noise, disc count, size,
shade, speed, height, tone pitch, rhythm, loudness, hiss) are drawn independently of the class.
Clips are written in the official UCF101 layout with three group-wise splits, where a group is a
"scene" (size, frame rate, background) shared by the clips of one class in one group, like
UCF101's groups of clips cut from one source video.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from extract.errors import UserError
from extract.video.encode import write_video
from pipeline.datasets.generated.outputs import prepare_output

# Two colours with equal BT.601 luma (0.299 R + 0.587 G + 0.114 B = 94.85 and 95.2).
APPEARANCES: dict[str, tuple[int, int, int]] = {"Red": (200, 50, 50), "Blue": (60, 85, 240)}
MOTIONS: dict[str, int] = {"Left": -1, "Right": 1}
# Tone pitch ranges in Hz (log-uniform draw); both inside VGGish's 125-7500 Hz mel range and
# far apart, so a log-mel spectrum tells them apart whatever the rhythm and hiss.
SOUNDS: dict[str, tuple[float, float] | None] = {
    "Low": (250.0, 450.0),
    "High": (1500.0, 2700.0),
    "Silent": None,
}
FRAME_SIZES: tuple[tuple[int, int], ...] = (
    (160, 120),
    (176, 144),
    (192, 144),
    (240, 180),
    (256, 192),
    (320, 240),
)
FRAME_RATES: tuple[int, ...] = (12, 15)
DURATION_S = (2.0, 4.0)
SAMPLE_RATE = 16000
GROUPS = 6
# Group visiting order: consecutive clips of a class land in different thirds of the groups,
# so even one or two clips per class leave training clips of that class in every split.
GROUP_ORDER = (1, 3, 5, 2, 4, 6)
SPLITS = 3
# Discs stay in the central band of heights, inside the centre crop the RGB backbone sees.
DISC_HEIGHT_BAND = (0.3, 0.7)
DISC_RADIUS = (0.09, 0.15)  # fraction of the frame height
SPEED = (0.02, 0.045)  # fraction of the frame width per frame
MANIFEST_NAME = "toy.json"
SPLITS_DIR = "ucfTrainTestlist"


@dataclass(frozen=True)
class Scene:
    """What the clips of one (class, group) share, like clips cut from one source video."""

    width: int
    height: int
    fps: int
    background: tuple[int, int, int]
    texture_seed: int


@dataclass(frozen=True)
class Clip:
    """Everything that determines one clip; also its record in toy.json."""

    path: str
    class_name: str
    label: int  # 1-based, as in classInd.txt
    group: int
    clip: int
    appearance: str
    motion: str
    sound: str
    width: int
    height: int
    fps: int
    frames: int
    duration: float
    background: tuple[int, int, int]
    texture_seed: int
    noise_sigma: float
    colour: tuple[int, int, int]
    discs: int
    radius: float  # pixels
    speed: float  # pixels per frame, signed: positive moves right
    phase: float  # x of the first disc in the first frame, pixels
    heights: tuple[float, ...]  # y of each disc, pixels
    tone_hz: float | None
    beep_period_s: float | None
    beep_duty: float | None
    loudness: float | None
    hiss: float | None


def class_names() -> list[str]:
    """The 12 class names in classInd order (alphabetical, as UCF101's), e.g. BlueLeftHigh."""
    return sorted(a + m + s for a, m, s in itertools.product(APPEARANCES, MOTIONS, SOUNDS))


def factors_of(name: str) -> tuple[str, str, str]:
    """(appearance, motion, sound) of a class name."""
    for a, m, s in itertools.product(APPEARANCES, MOTIONS, SOUNDS):
        if a + m + s == name:
            return a, m, s
    raise KeyError(name)


def split_testing(group: int) -> int:
    """The split (1-3) whose test list holds this group: split s tests the s-th third."""
    return (group - 1) * SPLITS // GROUPS + 1


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in values)
    return red, green, blue


def make_scene(seed: int, label: int, group: int) -> Scene:
    """Size, frame rate and background of one (class, group); independent of the class."""
    rng = np.random.default_rng([seed, label, group])
    width, height = FRAME_SIZES[rng.integers(len(FRAME_SIZES))]
    # background luma far from the discs' (~95) either way, so the discs always stand out
    luma = _uniform(rng, (25, 60)) if rng.random() < 0.5 else _uniform(rng, (150, 220))
    tint = rng.uniform(-12, 12, size=3)
    background = _rgb(np.clip(luma + tint, 0, 255).round())
    return Scene(
        width=int(width),
        height=int(height),
        fps=int(FRAME_RATES[rng.integers(len(FRAME_RATES))]),
        background=background,
        texture_seed=int(rng.integers(2**31)),
    )


def make_clip(seed: int, name: str, label: int, group: int, clip: int, scene: Scene) -> Clip:
    """Draw one clip's nuisances from its own random stream (seed, label, group, clip)."""
    appearance, motion, sound = factors_of(name)
    rng = np.random.default_rng([seed, label, group, clip, 1])
    duration_target = _uniform(rng, DURATION_S)
    frames = max(2, round(duration_target * scene.fps))
    shade = _uniform(rng, (0.85, 1.06))  # one law for both colours (240 * 1.06 < 255)
    colour = _rgb(np.clip(np.array(APPEARANCES[appearance]) * shade, 0, 255))
    discs = int(rng.integers(1, 3))
    pitch = SOUNDS[sound]
    audible = pitch is not None
    return Clip(
        path=f"{name}/v_{name}_g{group:02d}_c{clip:02d}.mp4",
        class_name=name,
        label=label,
        group=group,
        clip=clip,
        appearance=appearance,
        motion=motion,
        sound=sound,
        width=scene.width,
        height=scene.height,
        fps=scene.fps,
        frames=frames,
        duration=frames / scene.fps,
        background=scene.background,
        texture_seed=scene.texture_seed,
        noise_sigma=_uniform(rng, (1.0, 4.0)),
        colour=colour,
        discs=discs,
        radius=_uniform(rng, DISC_RADIUS) * scene.height,
        speed=MOTIONS[motion] * _uniform(rng, SPEED) * scene.width,
        phase=_uniform(rng, (0.0, scene.width)),
        heights=tuple(_uniform(rng, DISC_HEIGHT_BAND) * scene.height for _ in range(discs)),
        tone_hz=float(np.exp(rng.uniform(*np.log(pitch)))) if audible else None,
        beep_period_s=_uniform(rng, (0.25, 0.6)) if audible else None,
        beep_duty=_uniform(rng, (0.4, 0.8)) if audible else None,
        loudness=_uniform(rng, (0.2, 0.5)) if audible else None,
        hiss=_uniform(rng, (0.003, 0.03)) if audible else None,
    )


def background_image(clip: Clip) -> np.ndarray:
    """Static textured background (float32 HxWx3): the scene colour plus smooth blotches."""
    rng = np.random.default_rng(clip.texture_seed)
    coarse = rng.normal(0.0, 8.0, size=(6, 8, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (clip.width, clip.height), interpolation=cv2.INTER_CUBIC)
    return np.asarray(clip.background, dtype=np.float32) + texture


def disc_centres(clip: Clip, index: int) -> list[tuple[float, float]]:
    """(x, y) of each disc in frame `index`; x wraps into [0, width), discs evenly spaced."""
    return [
        ((clip.phase + disc * clip.width / clip.discs + clip.speed * index) % clip.width, y)
        for disc, y in enumerate(clip.heights)
    ]


def render_frames(clip: Clip) -> Iterator[np.ndarray]:
    """Yield the clip's RGB frames: discs drifting horizontally and wrapping at the edges.

    Discs are anti-aliased (a one-pixel soft edge) so sub-pixel motion shows in the pixels."""
    rng = np.random.default_rng([clip.texture_seed, clip.clip, 2])
    background = background_image(clip)
    colour = np.asarray(clip.colour, dtype=np.float32)
    xs = np.arange(clip.width, dtype=np.float32)[None, :]
    ys = np.arange(clip.height, dtype=np.float32)[:, None]
    for index in range(clip.frames):
        coverage = np.zeros((clip.height, clip.width), dtype=np.float32)
        for centre, y in disc_centres(clip, index):
            dx = (xs - centre + clip.width / 2) % clip.width - clip.width / 2  # wrap around
            distance = np.sqrt(dx**2 + (ys - y) ** 2)
            coverage = np.maximum(coverage, np.clip(clip.radius - distance + 0.5, 0.0, 1.0))
        image = background + coverage[..., None] * (colour - background)
        image += np.float32(clip.noise_sigma) * rng.standard_normal(image.shape, np.float32)
        yield np.clip(image, 0, 255).round().astype(np.uint8)


def render_audio(clip: Clip) -> np.ndarray | None:
    """Mono float32 audio at 16 kHz: a beeping tone (slight vibrato, 2nd harmonic) plus hiss;
    None for silent clips, which get no audio track at all."""
    if clip.tone_hz is None:
        return None
    rng = np.random.default_rng([clip.texture_seed, clip.clip, 3])
    t = np.arange(round(clip.duration * SAMPLE_RATE)) / SAMPLE_RATE
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * _uniform(rng, (3.0, 6.0)) * t)
    phase = 2 * np.pi * clip.tone_hz * np.cumsum(vibrato) / SAMPLE_RATE
    tone = np.sin(phase) + 0.3 * np.sin(2 * phase)
    cycle = (t + _uniform(rng, (0.0, clip.beep_period_s))) % clip.beep_period_s
    on = clip.beep_duty * clip.beep_period_s
    ramp = 0.01  # 10 ms fades avoid clicks that would smear the spectrum
    envelope = np.clip(np.minimum(cycle, on - cycle) / ramp, 0.0, 1.0)
    signal = clip.loudness * envelope * tone / 1.3 + clip.hiss * rng.standard_normal(len(t))
    return signal.astype(np.float32)


def plan_clips(seed: int, videos: int) -> list[Clip]:
    """All clips' parameters: `videos` spread as evenly as possible over the 12 classes."""
    names = class_names()
    clips = []
    for label, name in enumerate(names, start=1):
        count = videos // len(names) + (label <= videos % len(names))
        per_group: dict[int, int] = {}
        for index in range(count):
            group = GROUP_ORDER[(index + label - 1) % GROUPS]
            per_group[group] = per_group.get(group, 0) + 1
            scene = make_scene(seed, label, group)
            clips.append(make_clip(seed, name, label, group, per_group[group], scene))
    return clips


def write_split_lists(out: Path, clips: list[Clip]) -> None:
    """classInd.txt and the three train/test lists, in UCF101's exact formats."""
    folder = out / SPLITS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = class_names()
    lines = [f"{label} {name}" for label, name in enumerate(names, start=1)]
    (folder / "classInd.txt").write_text("\n".join(lines) + "\n")
    ordered = sorted(clips, key=lambda c: c.path)
    for split in range(1, SPLITS + 1):
        train = [f"{c.path} {c.label}" for c in ordered if split_testing(c.group) != split]
        test = [c.path for c in ordered if split_testing(c.group) == split]
        (folder / f"trainlist0{split}.txt").write_text("".join(f"{x}\n" for x in train))
        (folder / f"testlist0{split}.txt").write_text("".join(f"{x}\n" for x in test))


def generate_toy(out: Path, seed: int = 0, videos: int = 288, progress: bool = True) -> Path:
    """Write the toy dataset (clips, UCF101 split lists, toy.json) into `out`; returns `out`.

    Same seed and count give identical lists, toy.json and per-clip parameters."""
    names = class_names()
    if int(videos) != videos or videos < len(names):
        raise UserError(f"toy needs at least {len(names)} videos (one per class), got {videos}")
    out = prepare_output(out)
    clips = plan_clips(seed, int(videos))
    for clip in tqdm(clips, desc="toy clips", unit="clip", disable=not progress):
        target = out / clip.path
        target.parent.mkdir(parents=True, exist_ok=True)
        write_video(
            target, render_frames(clip), clip.fps, audio=render_audio(clip), sample_rate=SAMPLE_RATE
        )
    write_split_lists(out, clips)
    record = {
        "generator": "toy",
        "version": 1,
        "seed": int(seed),
        "videos": int(videos),
        "classes": names,
        "factors": {
            "appearance": {name: list(rgb) for name, rgb in APPEARANCES.items()},
            "motion": MOTIONS,
            "sound": {name: list(hz) if hz else None for name, hz in SOUNDS.items()},
        },
        "groups": GROUPS,
        "test_groups": {
            str(split): [g for g in range(1, GROUPS + 1) if split_testing(g) == split]
            for split in range(1, SPLITS + 1)
        },
        "sample_rate": SAMPLE_RATE,
        "clips": [asdict(clip) for clip in clips],
    }
    (out / MANIFEST_NAME).write_text(json.dumps(record, indent=1) + "\n")
    return out
