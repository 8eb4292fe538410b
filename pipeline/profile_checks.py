"""Check a whole profile when it is loaded, so a bad value stops the run before any video.

Otherwise each value is checked only where a worker uses it: a crop larger than the resized
frame or an unknown flow backend fails every row of a long run, blaming each video, and some
mistakes (a typo in `train.clusters`, `pca: no` read as text) silently change the result.
Every problem is collected, one line each naming the key, the value and what is allowed. The
allowed values come from the components themselves where they declare them (flow backends,
image backbone families and options, dataset adapters, the fields and checks of FlowParams and
TrainConfig); what they only decide while running (audio backbone names, what each flow
backend refuses) is repeated here, and the extraction still checks it too.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from extract.backbones.audio import AUDIO_SPEC_KEYS, LogMelStats
from extract.backbones.families import IMAGE_BUILDERS, IMAGE_SPEC_KEYS
from extract.backbones.vggish import EMBEDDING_DIM
from extract.errors import UserError
from extract.flow.stacks import FLOW_BACKENDS, FlowParams, backend_limitation
from pipeline.datasets.manifest import ADAPTERS
from pipeline.train.config import TrainConfig

# A check returns None for a good value, else the rest of the line after "key value".
Check = Callable[[Any], "str | None"]

MODEL_FAMILIES = ("torchvision", "timm", "mmaction2")  # named as family:<model>
SWITCH_WORDS = {"yes": True, "on": True, "no": False, "off": False}
# Peak memory of the torch TV-L1 backend per frame pair and pixel, input stacks included
# (measured: 200 B at 32 stacks of 6 frames at 340x256, 303 B at 8 stacks, on CPU).
FLOW_BYTES_PER_PAIR_PIXEL = 200
AUDIO_DIM = max(LogMelStats.dim, EMBEDDING_DIM)  # the widest audio features


def shown(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)


def _hint(word: Any, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(str(word), known, n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def as_switch(value: Any) -> Any:
    """yes/no/on/off (YAML 1.1 booleans, text to the loader) as true/false; others unchanged."""
    return SWITCH_WORDS.get(value.lower(), value) if isinstance(value, str) else value


def positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else ": must be a positive integer"


def positive_number(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else ": must be a positive number"


def optional(check: Check, meaning: str) -> Check:
    def run(value: Any) -> str | None:
        problem = None if value is None else check(value)
        return None if problem is None else f"{problem} or null ({meaning})"
    return run


def at_least(minimum: int) -> Check:
    def run(value: Any) -> str | None:
        return None if _is_int(value) and value >= minimum else f": must be an integer >= {minimum}"
    return run


def one_of(choices: Iterable[str]) -> Check:
    names = list(choices)

    def run(value: Any) -> str | None:
        return None if value in names else f" is unknown (choose: {', '.join(names)})"
    return run


def _is_pair(value: Any, minimum: int) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(_is_int(v) and v >= minimum for v in value))


def crop_size(value: Any) -> str | None:
    if (_is_int(value) and value >= 1) or _is_pair(value, 1):
        return None
    return ": must be a positive integer (square) or [width, height]"


def flow_size(value: Any) -> str | None:
    return None if _is_pair(value, 16) else (
        ": must be [width, height], two integers >= 16 (the smallest frames flow accepts)")


SECTION_CHECKS: dict[str, dict[str, Check]] = {
    "dataset": {"kind": one_of(ADAPTERS)},
    "limits": {"max_seconds": positive_number, "max_pixels": positive_int,
               "timeout_s": optional(positive_number, "no limit")},
}
MODALITY_CHECKS: dict[str, dict[str, Check]] = {
    "rgb": {"positions": positive_int, "batch_size": positive_int, "crop":
            optional(crop_size, "the whole resized frame"),
            "resize_short": optional(positive_int, "keep the video's size")},
    "flow": {"positions": positive_int, "batch_size": positive_int,
             "frames_per_stack": at_least(2), "size": flow_size,
             "backend": one_of(FLOW_BACKENDS), "bound": positive_number},
    "audio": {"positions": positive_int, "batch_size": positive_int},
}


class Problems(list):
    """The lines found so far, one per problem."""

    def value(self, key: str, value: Any, check: Check) -> bool:
        problem = check(value)
        if problem is not None:
            self.append(f"{key} {shown(value)}{problem}")
        return problem is None

    def mapping(self, key: str, value: Any, known: Iterable[str], what: str = "key"
                ) -> dict[str, Any] | None:
        """`value` as a mapping ({} for an empty section), its unknown keys reported."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.append(f"{key}: must be a mapping (key: value), got {shown(value)}")
            return None
        known = list(known)
        for name in value:
            if name not in known:
                self.append(f"{key}.{name}: unknown {what}{_hint(name, known)}")
        return value


def check_profile(raw: dict[str, Any], defaults: Mapping[str, Any],
                  modality_defaults: Mapping[str, Mapping[str, Any]]
                  ) -> tuple[dict[str, Any], list[str]]:
    """The profile completed with `defaults`, and every problem found in it."""
    problems = Problems()
    for key in raw:
        if key not in defaults:
            problems.append(f"{key}: unknown key{_hint(key, defaults)}")
    profile: dict[str, Any] = {}
    for section, checks in SECTION_CHECKS.items():
        given = problems.mapping(section, raw.get(section), checks) or {}
        profile[section] = {**defaults[section], **given}
        for key in given.keys() & checks.keys():
            problems.value(f"{section}.{key}", given[key], checks[key])
    profile["modalities"] = _modalities(raw.get("modalities"), modality_defaults, problems)
    profile["train"] = _train(raw.get("train"), problems)
    _memory(profile, problems)
    return profile, list(problems)


def _modalities(given: Any, defaults: Mapping[str, Mapping[str, Any]], problems: Problems
                ) -> dict[str, dict[str, Any]]:
    names = ", ".join(defaults)
    if not given:
        problems.append(f"modalities: name at least one of {names}")
        return {}
    if problems.mapping("modalities", given, defaults, what="modality") is None:
        return {}
    result = {}
    for name, settings in given.items():
        where = f"modalities.{name}"
        settings = problems.mapping(where, settings, defaults[name]) if name in defaults else None
        if settings is None:
            continue
        merged = copy.deepcopy({**defaults[name], **settings})
        checks = MODALITY_CHECKS[name]
        good = {key for key in checks if problems.value(f"{where}.{key}", merged[key],
                                                         checks[key])}
        _backbone(merged["backbone"], name, problems)
        if name == "rgb" and {"crop", "resize_short"} <= good:
            _crop_fits(merged["crop"], merged["resize_short"], problems)
        if name == "flow":
            merged["params"] = _flow_params(merged["params"], merged["backend"], problems)
        result[name] = merged
    return result


def _crop_fits(crop: Any, resize_short: Any, problems: Problems) -> None:
    """A centre crop must fit the resized frame of every video, portrait and square ones too."""
    if crop is None or resize_short is None:
        return
    if max(crop if isinstance(crop, list) else [crop]) > resize_short:
        problems.append(f"modalities.rgb.crop {shown(crop)} is larger than resize_short "
                        f"{resize_short} (crop <= resize_short, the short side of the resized "
                        "frame)")


def _backbone(spec: Any, modality: str, problems: Problems) -> None:
    """The name and options build_backbone will accept (weights are found when it builds)."""
    where = f"modalities.{modality}.backbone"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        problems.append(f"{where} {shown(spec)}: must be a mapping with a name, "
                        "e.g. {name: efficientnet_lite0}")
        return
    name = spec["name"]
    if modality == "audio":
        if problems.value(f"{where}.name", name, one_of(AUDIO_SPEC_KEYS)):
            problems.mapping(where, spec, sorted(AUDIO_SPEC_KEYS[name]))
            for switch in ("pca", "quantize"):
                if switch in spec:
                    spec[switch] = as_switch(spec[switch])
                    problems.value(f"{where}.{switch}", spec[switch], _typed(bool))
        return
    family, _, model = name.partition(":")
    names = [f"{f}:<model>" if f in MODEL_FAMILIES else f for f in IMAGE_BUILDERS]
    if family not in IMAGE_BUILDERS or (family in MODEL_FAMILIES) != bool(model):
        problems.append(f"{where}.name {shown(name)} is unknown (choose: {', '.join(names)})")
    problems.mapping(where, spec, sorted(IMAGE_SPEC_KEYS))
    if "seed" in spec:
        problems.value(f"{where}.seed", spec["seed"], _typed(int))


def _flow_params(params: Any, backend: Any, problems: Problems) -> dict[str, Any]:
    """TV-L1 parameters as FlowParams takes them, each checked by FlowParams itself."""
    where = "modalities.flow.params"
    hints = get_type_hints(FlowParams)
    params = problems.mapping(where, params, hints)
    if params is None:
        return {}
    for key in params.keys() & hints.keys():
        if problems.value(f"{where}.{key}", params[key], _typed(hints[key])):
            problems.value(f"{where}.{key}", params[key],
                           _by_constructor(lambda given: FlowParams(**given), key))
    # What a backend cannot do (it refuses only when it runs), by the backend's own rule.
    given = {key: params[key] for key in ("gamma", "interpolation") if key in params}
    try:
        limitation = backend_limitation(str(backend), FlowParams(**given))
    except (TypeError, ValueError, UserError):
        limitation = None  # the value itself is wrong: reported above
    if limitation:
        key, why = limitation
        problems.append(f"{where}.{key} {shown(params[key])}: {why} (backend is {shown(backend)})")
    return params


def _train(given: Any, problems: Problems) -> dict[str, Any]:
    """The `train:` section completed by TrainConfig, each field checked by TrainConfig."""
    hints = get_type_hints(TrainConfig)
    given = problems.mapping("train", given, hints)
    settings = {}
    for key, value in (given or {}).items():
        if key not in hints:
            continue
        value = as_switch(value) if hints[key] is bool else value
        where = f"train.{key}"
        if problems.value(where, value, _typed(hints[key])) and problems.value(
                where, value, _by_constructor(TrainConfig.from_dict, key)):
            settings[key] = value
    for key, names in (("modalities", settings.get("modalities") or []),
                       ("clusters", settings.get("clusters") or {})):
        for name in names:
            if name not in MODALITY_CHECKS:
                problems.append(f"train.{key}: unknown modality {shown(name)}"
                                f"{_hint(name, MODALITY_CHECKS)}")
    try:
        return dataclasses.asdict(TrainConfig.from_dict(settings))
    except UserError as exc:  # a rule between fields
        problems.append(f"train: {exc}")
        return dataclasses.asdict(TrainConfig())


def _by_constructor(build: Callable[[dict[str, Any]], Any], key: str) -> Check:
    """The component's own check of one field alone: its error, without its prefix."""
    def run(value: Any) -> str | None:
        try:
            build({key: value})
        except UserError as exc:
            return f": {str(exc).removeprefix('training config: ')}"
        return None
    return run


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def _typed(hint: Any) -> Check:
    """A check that a value has a dataclass field's declared type."""
    def run(value: Any) -> str | None:
        return None if _has_type(value, hint) else f": must be {_type_word(hint)}"
    return run


def _has_type(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is dict:
        return isinstance(value, dict) and all(
            _has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items())
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return _is_int(value) or (isinstance(value, float))
    return isinstance(value, hint) and (hint is bool or not isinstance(value, bool))


def _type_word(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_word(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(shown(a) for a in args)
    if origin is dict:
        return f"a mapping of {_type_word(args[0])} to {_type_word(args[1])}"
    if origin is list:
        return f"a list of {_type_word(args[0])}"
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _memory(profile: dict[str, Any], problems: Problems) -> None:
    """Refuse positions whose arrays for one video cannot fit this machine's memory."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for name, settings in profile["modalities"].items():
        reported = (f"modalities.{name}.", *(("limits.max_pixels",) if name == "rgb" else ()))
        if any(p.startswith(reported) for p in problems):
            continue  # estimated from good values only
        need, what = _video_bytes(name, settings, profile["limits"])
        if need > total:
            problems.append(
                f"modalities.{name}.positions {settings['positions']}: one video would need "
                f"about {_size(need)} in a worker ({what}), more than this machine's "
                f"{_size(total)} of memory"
            )


def _video_bytes(name: str, s: Mapping[str, Any], limits: Mapping[str, Any]) -> tuple[int, str]:
    """The largest arrays one video of modality `name` holds at once, and what they are."""
    k = s["positions"]
    if name == "rgb":
        crop, short = s["crop"], s["resize_short"]
        if crop is not None:
            width, height = crop if isinstance(crop, list) else (crop, crop)
            area, shape = width * height, f"{width}x{height}"
        elif short is not None:
            area, shape = short * short * 16 // 9, f"16:9 frames of short side {short}"
        else:
            area, shape = limits["max_pixels"], f"frames of up to {limits['max_pixels']} pixels"
        return k * area * 3, f"{k} RGB frames of {shape}, 3 bytes a pixel"
    if name == "flow":
        width, height = s["size"]
        pairs = k * (s["frames_per_stack"] - 1)
        return (pairs * width * height * FLOW_BYTES_PER_PAIR_PIXEL,
                f"{pairs} frame pairs of {width}x{height} in TV-L1, "
                f"{FLOW_BYTES_PER_PAIR_PIXEL} bytes a pixel")
    return k * AUDIO_DIM * 2, f"a feature row of {k} x {AUDIO_DIM} float16"


def _size(count: float) -> str:
    value = count / 2**30
    for unit in ("GiB", "TiB"):
        if value < 1024:
            return f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} PiB"


def format_problems(where: str, problems: list[str]) -> str:
    """One line for one problem; a count and one indented line each for several."""
    if len(problems) == 1:
        return f"{where}: {problems[0]}"
    lines = "\n".join(f"  {problem}" for problem in problems)
    return f"{where}: {len(problems)} problems in the profile (nothing was run):\n{lines}"
