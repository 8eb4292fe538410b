"""`features`: one video -> arrays per modality, and the run of a whole dataset on Dask workers."""
