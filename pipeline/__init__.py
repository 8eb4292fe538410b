"""Orchestration: dataset manifests, generated datasets, Dask scheduling, the Zarr store,
training, evaluation and inference. Wires `extract` and `model` together."""
