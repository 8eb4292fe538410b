"""The Zarr feature store (format v1): its codes, creation, reading, writing and summary."""
