"""Fetch runs of consecutive frames at sorted times from one open video stream.

This is the engine behind `read_rgb` (runs of 1 frame) and `read_gray_stacks` (runs of M).

Which frame belongs to a time t: the frame whose presentation interval [pts_i, pts_i+1)
contains t (a t before the first frame takes the first frame). A run is that frame and the
frames that follow it in presentation order.

Seek or decode on: decoding sequentially (with frame threads) is cheapest when positions are
dense; seeking pays off when the keyframe before the next position lies well past the frame
we are at, because everything between can then be skipped. The container's index (mp4 `stss`,
mkv cues) gives the keyframes without decoding, so the choice is made per position: seek when it
skips at least SEEK_MIN_SKIP_FRAMES frames, otherwise decode on. Without an index we only seek
across gaps longer than NO_INDEX_SEEK_GAP_S. This is never slower than a plain sequential read
by more than a seek's cost and is the same as one when positions are dense.

Skipping what no run needs: frames far from every position are still decoded when other
frames reference them, but non-reference frames (most B-frames) there are not decoded at all:
the decoder's skip_frame is switched to NONREF for packets whose timestamps lie outside every
run's neighbourhood, which saves about a third of the decoding on typical h264.

Converted pixels are made only for frames that end up in a run, at the output size, in
libswscale. Raw frames are held only while a run waits for its next frames, so memory stays at
a few decoded frames whatever the video's length.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from extract.errors import DecodeError
from extract.video.media import DECODE_FAILURES, Deadline, reason_of

SEEK_MIN_SKIP_FRAMES = 16
NO_INDEX_SEEK_GAP_S = 10.0
# A time within this of a frame's start belongs to that frame: centres computed in floating
# point land a hair before exact frame boundaries (e.g. 14.5 * 0.08 vs 29 / 25).
BOUNDARY_EPS_S = 1e-6


class _Decoded:
    """One decoded frame, its time, and its converted pixels once something needed them."""

    __slots__ = ("frame", "time", "_pixels")

    def __init__(self, frame: VideoFrame, time: float) -> None:
        self.frame = frame
        self.time = time
        self._pixels: np.ndarray | None = None

    def pixels(self, convert: Callable[[VideoFrame], np.ndarray]) -> np.ndarray:
        if self._pixels is None:
            self._pixels = convert(self.frame)
        return self._pixels


@dataclass
class Run:
    """Converted frames of one run and their times (seconds from the stream's start)."""

    pixels: list[np.ndarray]
    times: list[float]


@dataclass
class SampleResult:
    runs: list[Run]
    frames_decoded: int
    seeks: int
    stream: int  # the index of the sampled stream in its file
    stop_reason: str | None = None  # why decoding ended early, if it failed


class SeekError(DecodeError):
    """FFmpeg could not seek in the stream (raw h264: "operation not permitted").

    A failed seek may have read on to build an index, so the demuxer's position is unknown
    afterwards: the caller reads the file again from the start without seeking.
    """


def _seek(container: InputContainer, stream: VideoStream, time: float, origin: float,
          name: str) -> None:
    """Seek to the keyframe at or before `time` (seconds from the stream's start)."""
    try:
        container.seek(max(0, math.floor((time + origin) / stream.time_base)), stream=stream,
                       backward=True)
    except DECODE_FAILURES as error:
        where = f"to {time:.2f}s" if time > 0 else "back to the start"
        raise SeekError(f"{name}: cannot seek in this stream ({reason_of(error)}): "
                        f"seeking {where} failed") from error


class _KeyframeIndex:
    """Keyframe presentation times predicted from the container's index.

    mp4 indexes decode timestamps, which run ahead of presentation by the reorder delay (the
    edit list's shift: the first entry sits before the stream's start). Seeking to a time t
    lands on the keyframe whose *presentation* time is at or before t, so entries are shifted
    by that delay before they are compared with presentation times (mkv cues need no shift).
    """

    def __init__(self, stream: VideoStream, origin: float) -> None:
        self._entries = stream.index_entries
        self._base = stream.time_base
        self._origin = origin
        self.available = self._base is not None and len(self._entries) > 0
        self._shift = 0.0
        if self.available:
            first = float(self._entries[0].timestamp * self._base)
            self._shift = max(0.0, origin - first)

    def before(self, time: float) -> float | None:
        """Presentation time of the last keyframe at or before `time`, None when none is."""
        timestamp = math.floor((time + self._origin - self._shift) / self._base)
        position = self._entries.search_timestamp(timestamp, backward=True)
        if position < 0:
            return None
        decode_time = float(self._entries[position].timestamp * self._base)
        return decode_time + self._shift - self._origin


def stream_origin(stream: VideoStream) -> float:
    """The stream's start time in seconds; our times count from it."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def stream_fps(stream: VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 25.0


class _Neighbourhoods:
    """Which presentation times lie near a run, so their frames must be decoded.

    A run starting at s needs the frame containing s (presentation time in (s - 1 frame, s])
    and the run_length - 1 frames after it; one frame of margin on each side absorbs uneven
    frame durations. Runs of several frames may be shifted back at the end of the window, so
    the last run_length + 1 frames are always needed then.
    """

    def __init__(
        self, starts: Sequence[float], run_length: int, frame_s: float, window_s: float
    ) -> None:
        self._starts = list(starts)
        self._before = 2 * frame_s
        self._after = run_length * frame_s
        self._tail = window_s - (run_length + 1) * frame_s if run_length > 1 else math.inf

    def need(self, time: float) -> bool:
        if time >= self._tail:
            return True
        nearest = bisect_right(self._starts, time + self._before) - 1
        return nearest >= 0 and self._starts[nearest] >= time - self._after


def _frames_from_here(
    container: InputContainer, stream: VideoStream, near: _Neighbourhoods, origin: float,
    deadline: Deadline | None,
) -> Iterator[VideoFrame]:
    """Decode on from the demuxer's position, skipping non-reference frames no run needs.

    The deadline is checked per packet: skipped packets cost time too.
    """
    context = stream.codec_context
    context.skip_frame = "DEFAULT"  # a previous pass (before a seek) may have left NONREF on
    skipping = False
    for packet in container.demux(stream):
        if deadline is not None:
            deadline.check()
        if packet.pts is not None and packet.time_base is not None:
            skip = not near.need(float(packet.pts * packet.time_base) - origin)
            if skip != skipping:
                context.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
        yield from packet.decode()


def sample_runs(
    container: InputContainer,
    stream: VideoStream,
    starts: Sequence[float],
    run_length: int,
    convert: Callable[[VideoFrame], np.ndarray],
    window_s: float,
    name: str,
    deadline: Deadline | None = None,
    seek: bool = True,
) -> SampleResult:
    """For each sorted start time, the frame containing it and the next run_length-1 frames.

    Frames at or after `window_s` (seconds from the start) are never decoded. A run that would
    pass the last frame is shifted back to end there; with fewer frames than run_length in the
    whole window, the run is padded by repeating its last frame. A start time more than two
    frames past the last frame that decoded means frames are missing (truncated or corrupt
    file): DecodeError. Past `deadline` (checked per packet) it is a DecodeError too.
    With `seek` false it decodes from where the demuxer stands, never seeking; a seek that
    fails raises SeekError.
    """
    origin = stream_origin(stream)
    frame_s = 1.0 / stream_fps(stream)
    keyframes = _KeyframeIndex(stream, origin)
    safety_s = max(3 * frame_s, 0.1)
    near = _Neighbourhoods(starts, run_length, frame_s, window_s)

    runs: list[Run | None] = [None] * len(starts)
    active: list[tuple[int, list[_Decoded]]] = []
    recent: deque[_Decoded] = deque(maxlen=run_length)
    next_start = 0
    previous: _Decoded | None = None
    last_time = -frame_s
    frames_decoded = 0
    seeks = 0
    seeking_allowed = seek
    sought: set[int] = set()
    stop_reason: str | None = None

    def finish(index: int, items: list[_Decoded]) -> None:
        runs[index] = Run([item.pixels(convert) for item in items], [item.time for item in items])

    def seek_target() -> float | None:
        """Where to seek before the next start, or None to decode on."""
        if not seeking_allowed or active or next_start >= len(starts) or next_start in sought:
            return None
        target = starts[next_start] - safety_s
        if target <= last_time:
            return None
        if keyframes.available:
            keyframe = keyframes.before(target)
            worth = keyframe is not None and keyframe - last_time >= SEEK_MIN_SKIP_FRAMES * frame_s
        else:
            worth = target - last_time >= NO_INDEX_SEEK_GAP_S
        return target if worth else None

    finished = False
    just_sought = False
    while not finished:
        target = seek_target()
        if target is not None:
            _seek(container, stream, target, origin, name)
            seeks += 1
            sought.add(next_start)  # one seek per position: a wrong prediction cannot loop
            previous = None
            recent.clear()
            just_sought = True
        finished = True
        try:
            for frame in _frames_from_here(container, stream, near, origin, deadline):
                time = last_time + frame_s if frame.time is None else frame.time - origin
                if just_sought:
                    just_sought = False
                    if time > starts[next_start] + BOUNDARY_EPS_S:
                        # The seek landed past the frame we need: restart from the beginning
                        # and read on without seeking (always right, rarely needed).
                        _seek(container, stream, -origin, origin, name)
                        seeking_allowed = False
                        last_time = -frame_s
                        finished = False
                        break
                if time >= window_s:
                    break
                item = _Decoded(frame, time)
                frames_decoded += 1
                while next_start < len(starts) and starts[next_start] + BOUNDARY_EPS_S < time:
                    active.append((next_start, [previous if previous is not None else item]))
                    next_start += 1
                still_active = []
                for index, items in active:
                    if len(items) < run_length and items[-1] is not item:
                        items.append(item)
                    if len(items) == run_length:
                        finish(index, items)
                    else:
                        still_active.append((index, items))
                active = still_active
                previous = item
                recent.append(item)
                last_time = time
                if next_start >= len(starts) and not active:
                    break
                if seek_target() is not None:
                    finished = False
                    break
        except DECODE_FAILURES as error:
            stop_reason = reason_of(error)
            finished = True

    if previous is None:
        detail = f" ({stop_reason})" if stop_reason else ""
        raise DecodeError(f"{name}: no decodable video frames{detail}")
    if next_start < len(starts) and starts[-1] > last_time + 2 * frame_s:
        why = f": {stop_reason}" if stop_reason else ""
        raise DecodeError(
            f"{name}: truncated or corrupt, frames end at {last_time:.2f}s "
            f"but {starts[-1]:.2f}s is needed{why}"
        )
    tail = list(recent)
    while len(tail) < run_length:
        tail.append(tail[-1])
    for index in [i for i, _ in active] + list(range(next_start, len(starts))):
        finish(index, tail)
    return SampleResult(
        runs=[run for run in runs if run is not None],
        frames_decoded=frames_decoded,
        seeks=seeks,
        stream=stream.index,
        stop_reason=stop_reason,
    )

