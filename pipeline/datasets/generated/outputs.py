"""Output folders for generated datasets: created up front, with one clear line when impossible."""

from __future__ import annotations

from pathlib import Path

from extract.errors import UserError


def prepare_output(out: Path) -> Path:
    """Create `out` or explain in one line why it cannot hold the dataset."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write the dataset into {out}: {exc.strerror or exc}") from exc
    return out
