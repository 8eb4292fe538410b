"""Process-level tests: what only real processes show. `cli.py` run as a subprocess (exit codes,
one-line errors, hostile files, storage faults), kill -9 of a run then resume, Ctrl-C/SIGTERM
and killed workers on real multi-process Dask LocalClusters, a real `dask scheduler` +
`dask worker` cluster losing a worker, two worker processes against one. Run them alone with
`.venv/bin/python -m pytest tests/system`; `make test` includes them (and `make test-slow`
their slow-marked cases). Value-only checks belong in tests/, on in-process Dask."""
