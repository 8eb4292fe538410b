"""Optical flow: one batched interface (TSN-quantised stacks) over torch TV-L1, OpenCV and DIS."""
