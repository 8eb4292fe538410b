"""Everything that turns one video into arrays: decoding, sampling, optical flow, audio, backbones.

Knows nothing of datasets, Dask or stores.
"""
