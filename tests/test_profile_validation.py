"""A profile is checked whole when it is loaded: every problem at once, one line each.

Each case writes a real YAML file and loads it as `features` and `train` do; the CLI case runs
`cli.py features` as a process on the real toy clips and checks that it stops before any
work. The boundary cases (crop == resize_short, 16x16 flow frames) are run on a real clip to
show the checks refuse only what the extraction itself would refuse.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from extract.errors import UserError
from extract.flow.stacks import flow_stacks
from extract.video.frames import read_gray_stacks, read_rgb
from pipeline.profiles import load_profile
from pipeline.train.config import TrainConfig
from tests.processes import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    """The problem lines of a profile that must be refused."""
    path = write(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_profile(path)
    lines = str(caught.value).splitlines()
    if len(lines) == 1:
        assert lines[0].startswith(f"{path}: ")
        return [lines[0].removeprefix(f"{path}: ")]
    assert lines[0] == f"{path}: {len(lines) - 1} problems in the profile (nothing was run):"
    return [line.strip() for line in lines[1:]]


@pytest.mark.parametrize(("text", "line"), [
    ("modalities:\n  rgb: {resize_short: 256, crop: 300}\n",
     "modalities.rgb.crop 300 is larger than resize_short 256 (crop <= resize_short, the short "
     "side of the resized frame)"),
    ("modalities:\n  rgb: {resize_short: 128, crop: [112, 160]}\n",
     "modalities.rgb.crop [112, 160] is larger than resize_short 128 (crop <= resize_short, the "
     "short side of the resized frame)"),
    ("modalities:\n  flow: {backend: tvl2}\n",
     "modalities.flow.backend 'tvl2' is unknown (choose: torch, opencv, dis)"),
    ("modalities:\n  rgb: {positon: 4}\n",
     "modalities.rgb.positon: unknown key (did you mean positions?)"),
    ("modalities:\n  rbg: {}\n", "modalities.rbg: unknown modality (did you mean rgb?)"),
    ("modalities:\n  rgb: {}\nlimits: {max_pixels: -5}\n",
     "limits.max_pixels -5: must be a positive integer"),
    ("modalities:\n  rgb: {}\nlimits: {max_seconds: 0}\n",
     "limits.max_seconds 0: must be a positive number"),
    ("modalities:\n  rgb: {}\nlimits: {max_seconds: 1:30}\n",  # 90 (base 60) in YAML 1.1
     "limits.max_seconds '1:30': must be a positive number"),
    ("modalities:\n  rgb: {}\nlimits: {timeout_s: off}\n",
     "limits.timeout_s 'off': must be a positive number or null (no limit)"),
    ("modalities:\n  rgb: {positions: 2.5}\n", "modalities.rgb.positions 2.5: must be a positive "
     "integer"),
    ("modalities:\n  rgb: {positions: yes}\n",
     "modalities.rgb.positions 'yes': must be a positive integer"),
    ("modalities:\n  audio: {batch_size: 0}\n",
     "modalities.audio.batch_size 0: must be a positive integer"),
    ("modalities:\n  flow: {frames_per_stack: 1}\n",
     "modalities.flow.frames_per_stack 1: must be an integer >= 2"),
    ("modalities:\n  flow: {size: [15, 48]}\n", "modalities.flow.size [15, 48]: must be [width, "
     "height], two integers >= 16 (the smallest frames flow accepts)"),
    ("modalities:\n  flow: {bound: -1}\n", "modalities.flow.bound -1: must be a positive number"),
    ("modalities:\n  flow: {params: {nscale: 3}}\n",
     "modalities.flow.params.nscale: unknown key (did you mean nscales?)"),
    ("modalities:\n  flow: {params: {warps: 2.5}}\n",
     "modalities.flow.params.warps 2.5: must be an integer"),
    ("modalities:\n  flow: {params: {scale_step: 1.5}}\n",
     "modalities.flow.params.scale_step 1.5: flow scale_step=1.5: must be in (0, 1)"),
    ("modalities:\n  flow: {params: {interpolation: cubic}}\n",
     "modalities.flow.params.interpolation 'cubic': must be one of 'bicubic', 'bilinear'"),
    ("modalities:\n  flow: {backend: torch, params: {gamma: 0.1}}\n",
     "modalities.flow.params.gamma 0.1: only the opencv backend has the illumination term "
     "(backend is 'torch')"),
    ("modalities:\n  flow: {backend: opencv, params: {interpolation: bilinear}}\n",
     "modalities.flow.params.interpolation 'bilinear': the opencv backend is bicubic only "
     "(backend is 'opencv')"),
    ("modalities:\n  rgb: {backbone: {name: efficientnet_lit0}}\n",
     "modalities.rgb.backbone.name 'efficientnet_lit0' is unknown (choose: efficientnet_lite0, "
     "random, torchvision:<model>, timm:<model>, mmaction2:<model>)"),
    ("modalities:\n  rgb: {backbone: {name: 'timm:'}}\n",
     "modalities.rgb.backbone.name 'timm:' is unknown (choose: efficientnet_lite0, random, "
     "torchvision:<model>, timm:<model>, mmaction2:<model>)"),
    ("modalities:\n  flow: {backbone: {name: random, sed: 3}}\n",
     "modalities.flow.backbone.sed: unknown key (did you mean seed?)"),
    ("modalities:\n  rgb: {backbone: efficientnet_lite0}\n",
     "modalities.rgb.backbone 'efficientnet_lite0': must be a mapping with a name, "
     "e.g. {name: efficientnet_lite0}"),
    ("modalities:\n  audio: {backbone: {name: vgish}}\n",
     "modalities.audio.backbone.name 'vgish' is unknown (choose: logmel, vggish)"),
    ("modalities:\n  audio: {backbone: {name: logmel, pca: true}}\n",
     "modalities.audio.backbone.pca: unknown key (known: name)"),
    ("modalities:\n  audio: {backbone: {name: vggish, pca: maybe}}\n",
     "modalities.audio.backbone.pca 'maybe': must be true or false"),
    ("dataset: {kind: ucf102}\nmodalities:\n  rgb: {}\n",
     "dataset.kind 'ucf102' is unknown (choose: ucf101, hmdb51, kinetics400, folder)"),
    ("modalities:\n  rgb: {}\nlimit: {}\n", "limit: unknown key (did you mean limits?)"),
    ("modalities:\n  rgb: {}\nlimits: [1]\n", "limits: must be a mapping (key: value), got [1]"),
    ("modalities: [rgb, flow]\n",
     "modalities: must be a mapping (key: value), got ['rgb', 'flow']"),
    ("dataset: {kind: folder}\n", "modalities: name at least one of rgb, flow, audio"),
    ("modalities:\n  rgb: {}\ntrain: {lr: 0}\n",
     "train.lr 0: lr must be a positive, finite number"),
    ("modalities:\n  rgb: {}\ntrain: {batch_size: 1e2}\n",
     "train.batch_size 100.0: must be an integer"),
    ("modalities:\n  rgb: {}\ntrain: {shifting: maybe}\n",
     "train.shifting 'maybe': must be true or false"),
    ("modalities:\n  rgb: {}\ntrain: {clusters: {rgb: 8, rbg: 4}}\n",
     "train.clusters: unknown modality 'rbg' (did you mean rgb?)"),
    ("modalities:\n  rgb: {}\ntrain: {modalities: [rgb, sound]}\n",
     "train.modalities: unknown modality 'sound' (known: rgb, flow, audio)"),
    ("modalities:\n  rgb: {}\ntrain: {lerning_rate: 1}\n", "train.lerning_rate: unknown key "
     f"(known: {', '.join(f.name for f in dataclasses.fields(TrainConfig))})"),
])
def test_each_bad_value_is_one_line_naming_key_value_and_rule(tmp_path: Path, text: str,
                                                             line: str) -> None:
    assert problems_of(tmp_path, text) == [line]


def test_positions_that_cannot_fit_in_memory_are_refused_with_the_estimate(
        tmp_path: Path) -> None:
    """10^8 frames of 224x224 (13.7 TiB) fit no machine; 64 positions pass (the same rules)."""
    text = ("modalities:\n  rgb: {positions: 100000000, resize_short: 256, crop: 224}\n"
            "  flow: {positions: 1000000}\n  audio: {positions: 100000000000}\n")
    lines = problems_of(tmp_path, text)
    assert [line.split(":")[0] for line in lines] == [
        "modalities.rgb.positions 100000000", "modalities.flow.positions 1000000",
        "modalities.audio.positions 100000000000"]
    assert "would need about 13.7 TiB in a worker (100000000 RGB frames of 224x224, 3 bytes a " \
           "pixel), more than this machine's" in lines[0]
    assert "(5000000 frame pairs of 340x256 in TV-L1, 200 bytes a pixel)" in lines[1]
    assert "about 23.3 TiB in a worker (a feature row of 100000000000 x 128 float16)" in lines[2]
    fits = load_profile(write(tmp_path, "modalities:\n  rgb: {positions: 64, crop: 224}\n"
                                        "  flow: {positions: 64}\n  audio: {positions: 64}\n"))
    assert [m["positions"] for m in fits["modalities"].values()] == [64, 64, 64]


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    lines = problems_of(tmp_path, """\
dataset: {kind: ucf102}
limits: {max_pixels: -5, max_secnds: 3}
modalities:
  rgb: {positon: 4, crop: 300, resize_short: 256}
  flow: {backend: tvl2, params: {warps: 0}}
train: {batch_size: ten, dropout: 2, hiden: 3}
trian: {}
""")
    assert lines == [
        "trian: unknown key (did you mean train?)",
        "dataset.kind 'ucf102' is unknown (choose: ucf101, hmdb51, kinetics400, folder)",
        "limits.max_secnds: unknown key (did you mean max_seconds?)",
        "limits.max_pixels -5: must be a positive integer",
        "modalities.rgb.positon: unknown key (did you mean positions?)",
        "modalities.rgb.crop 300 is larger than resize_short 256 (crop <= resize_short, the "
        "short side of the resized frame)",
        "modalities.flow.backend 'tvl2' is unknown (choose: torch, opencv, dis)",
        "modalities.flow.params.warps 0: flow nscales, warps and iteration counts must be >= 1",
        "train.hiden: unknown key (did you mean hidden?)",
        "train.batch_size 'ten': must be an integer",
        "train.dropout 2: dropout must be in [0, 1)",
    ]


def test_numbers_and_switches_read_as_written(tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-3 as text and 010 as 8; a profile reads them as a person means them.
    Switches accept yes/no/on/off; the words stay text everywhere else."""
    profile = load_profile(write(tmp_path, """\
limits: {max_seconds: 6e2, timeout_s: 1.5E+2}
modalities:
  rgb: {positions: 010}
  flow: {bound: 2e1, params: {epsilon: 1e-2, tau: .25}}
  audio: {backbone: {name: vggish, pca: no, quantize: off}}
train: {lr: 1e-3, weight_decay: 5E-4, shifting: no, progress: on, memory_budget_gb: 2e0}
"""))
    assert profile["limits"]["max_seconds"] == 600.0
    assert profile["limits"]["timeout_s"] == 150.0
    assert profile["modalities"]["rgb"]["positions"] == 10
    assert profile["modalities"]["flow"]["bound"] == 20.0
    assert profile["modalities"]["flow"]["params"] == {"epsilon": 0.01, "tau": 0.25}
    assert profile["modalities"]["audio"]["backbone"] == {"name": "vggish", "pca": False,
                                                          "quantize": False}
    train = profile["train"]
    assert (train["lr"], train["weight_decay"], train["memory_budget_gb"]) == (1e-3, 5e-4, 2.0)
    assert (train["shifting"], train["progress"]) == (False, True)
    assert all(isinstance(v, float) for v in (train["lr"], train["weight_decay"]))


@pytest.mark.parametrize(("text", "line"), [
    ("", "the profile is empty (it needs at least `modalities:`)"),
    ("# nothing yet\n", "the profile is empty (it needs at least `modalities:`)"),
    ("- rgb\n- flow\n", "line 1: a profile must be a mapping of settings (key: value), not a list"),
    ("\n\nrgb\n", "line 3: a profile must be a mapping of settings (key: value), not a single "
     "value"),
    ("modalities:\n\trgb: {}\n", "line 2, column 1: not valid YAML: found character '\\t' that "
     "cannot start any token (indent with spaces: YAML does not allow tabs)"),
    ("modalities:\n  rgb: {positions: 4\n", "line 3, column 1: not valid YAML: expected ',' or "
     "'}', but got '<stream end>'"),
    ("modalities:\n  rgb: {positions: 4}\n  rgb: {positions: 8}\n",
     "line 3, column 3: not valid YAML: 'rgb' is set twice (first on line 2)"),
])
def test_files_that_are_no_profile_get_one_line_with_where(tmp_path: Path, text: str,
                                                          line: str) -> None:
    assert problems_of(tmp_path, text) == [line]


def test_a_profile_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# caf\xe9\nmodalities:\n  rgb: {}\n".encode("latin-1"))
    with pytest.raises(UserError) as caught:
        load_profile(path)
    assert str(caught.value) == (f"{path}: cannot read the profile ('utf-8' codec can't decode "
                                 "byte 0xe9 in position 5: invalid continuation byte)")


def test_the_boundaries_accepted_are_the_extraction_s_own(tmp_path: Path,
                                                          toy_videos: Path) -> None:
    """crop == resize_short and 16x16 flow frames pass the check and extract a real clip."""
    profile = load_profile(write(tmp_path, """\
modalities:
  rgb: {positions: 2, resize_short: 48, crop: 48}
  flow: {positions: 1, frames_per_stack: 2, size: [16, 16], backend: dis}
"""))
    clip = next(toy_videos.rglob("*.mp4"))
    rgb, flow = profile["modalities"]["rgb"], profile["modalities"]["flow"]
    frames = read_rgb(clip, rgb["positions"], rgb["resize_short"], rgb["crop"]).frames
    assert frames.shape == (2, 48, 48, 3)
    stacks = read_gray_stacks(clip, flow["positions"], flow["frames_per_stack"],
                              tuple(flow["size"])).stacks
    assert flow_stacks(stacks, flow["backend"]).shape == (1, 2, 16, 16)
    with pytest.raises(UserError, match="smaller than crop 49x49"):  # what the check prevents
        read_rgb(clip, 1, 48, 49)
    with pytest.raises(UserError, match="below 16x16"):
        flow_stacks(np.zeros((1, 2, 15, 16), np.uint8), "dis")


def test_features_cli_lists_every_problem_and_starts_nothing(tmp_path: Path,
                                                             toy_videos: Path) -> None:
    bad = write(tmp_path, "modalities:\n  rgb: {crop: 300}\n  flow: {backend: tvl2}\n"
                          "limits: {max_pixels: -5}\n")
    out = tmp_path / "toy.zarr"
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "features", "toy", "--root", str(toy_videos),
         "--config", str(bad), "--out", str(out), "--workers", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"error: {bad}: 3 problems in the profile (nothing was run):",
        "  limits.max_pixels -5: must be a positive integer",
        "  modalities.rgb.crop 300 is larger than resize_short 256 (crop <= resize_short, the "
        "short side of the resized frame)",
        "  modalities.flow.backend 'tvl2' is unknown (choose: torch, opencv, dis)",
    ]
    assert result.stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
