"""The test suite. Shared inputs (a toy set, its store, a checkpoint, an in-process Dask
cluster) are session fixtures in conftest.py; helpers (fake_store, synth_video, hostile,
profiles, processes) are imported as `tests.<module>` from here and from tests/system/.
Process-level cases live in tests/system/."""
