"""OpenCV flow backends: DualTVL1 (the reference TV-L1) and DIS (fast, less exact).

Both are called once per pair, as users of OpenCV do; OpenCV parallelises inside each call over
its own thread pool (``cv2.getNumThreads()``), so we do not add a second level of threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from extract.flow.stacks import FlowParams

DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM


def opencv_tvl1(prev: np.ndarray, nxt: np.ndarray, params: FlowParams) -> np.ndarray:
    """cv2.optflow DualTVL1 on (B,H,W) uint8 frames -> (B,2,H,W) float32, x then y."""
    solver = cv2.optflow.DualTVL1OpticalFlow_create(
        tau=params.tau, lambda_=params.lambda_, theta=params.theta, nscales=params.nscales,
        warps=params.warps, epsilon=params.epsilon, innnerIterations=params.inner_iterations,
        outerIterations=params.outer_iterations, scaleStep=params.scale_step,
        gamma=params.gamma, medianFiltering=params.median_filtering,
    )
    flows = [solver.calc(a, b, None).transpose(2, 0, 1) for a, b in zip(prev, nxt, strict=True)]
    return np.stack(flows)


def opencv_dis(prev: np.ndarray, nxt: np.ndarray, params: FlowParams) -> np.ndarray:
    """OpenCV's DIS flow (preset MEDIUM; TV-L1 parameters do not apply) -> (B,2,H,W) float32."""
    solver = cv2.DISOpticalFlow_create(DIS_PRESET)
    flows = [solver.calc(a, b, None).transpose(2, 0, 1) for a, b in zip(prev, nxt, strict=True)]
    return np.stack(flows)
