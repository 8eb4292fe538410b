"""Decoding with PyAV: open a file, sample frames and flow stacks, read audio, write clips."""
