"""Small extraction profiles for tests: the code path of `make features`, with tiny inputs."""

from __future__ import annotations

# Real torch TV-L1 (eager on CPU) with few iterations: used where the features themselves are
# checked (end-to-end features, classify).
TINY_PROFILE = """
dataset: {kind: ucf101}
limits: {max_seconds: 60, timeout_s: 60}
modalities:
  rgb: {positions: 3, resize_short: 64, crop: 56, backbone: {name: efficientnet_lite0}}
  flow:
    positions: 2
    frames_per_stack: 3
    size: [64, 48]
    params: {nscales: 2, warps: 2, outer_iterations: 2, inner_iterations: 10}
    backbone: {name: efficientnet_lite0}
  audio: {positions: 3, backbone: {name: logmel}}
"""

# A cheap profile for the tests that run many whole extractions (crash-resume, a Dask
# cluster, load): small crops, OpenCV's DIS flow (no compilation warm-up in each worker).
CHEAP_PROFILE = """
dataset: {kind: folder}
limits: {max_seconds: 60, timeout_s: 60}
modalities:
  rgb: {positions: 3, resize_short: 64, crop: 56, backbone: {name: efficientnet_lite0}}
  flow:
    positions: 2
    frames_per_stack: 3
    size: [64, 48]
    backend: dis
    backbone: {name: efficientnet_lite0}
  audio: {positions: 3, backbone: {name: logmel}}
"""

# The hostile-inputs profile: CHEAP_PROFILE's DIS flow (flow sees fixed-size frames whatever
# the file, and DIS skips the torch TV-L1 compile, ~30 s per worker here) with
# max_seconds 20, which keeps the 3-hour file cheap, and a decode timeout of 120 s.
HOSTILE_MAX_SECONDS = 20
HOSTILE_PROFILE = f"""
dataset: {{kind: folder}}
limits: {{max_seconds: {HOSTILE_MAX_SECONDS}, timeout_s: 120}}
modalities:
  rgb: {{positions: 3, resize_short: 64, crop: 56, backbone: {{name: efficientnet_lite0}}}}
  flow:
    positions: 2
    frames_per_stack: 3
    size: [64, 48]
    backend: dis
    backbone: {{name: efficientnet_lite0}}
  audio: {{positions: 3, backbone: {{name: logmel}}}}
"""
