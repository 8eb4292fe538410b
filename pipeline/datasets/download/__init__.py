"""Downloading the real datasets: HTTP resume, unpacking, layout, sources, Kinetics clips."""
