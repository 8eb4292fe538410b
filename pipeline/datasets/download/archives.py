"""Unpacking the official archives: zip and tar through the standard library, rar through an
external tool (the standard library cannot read it), and archives nested inside archives
(HMDB51 ships one .rar per class inside its outer .rar)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

from extract.errors import UserError

# Tried in this order; 7-Zip reads .rar only with its RAR codec (Debian: 7zip-rar/p7zip-rar).
RAR_TOOLS = ("unrar", "bsdtar", "7z", "7zz")
RAR_INSTALL_HINT = (
    "install one of: bsdtar (apt-get install libarchive-tools / brew install libarchive / "
    "conda install -c conda-forge libarchive), unrar (apt-get install unrar, non-free), "
    "7-Zip with RAR support (apt-get install 7zip 7zip-rar)"
)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = (".rar", ".zip", *TAR_SUFFIXES)


def unpack_archive(archive: Path, dest: Path) -> None:
    """Unpack a .zip, .tar(.gz|.bz2|.xz) or .rar into `dest` (created).

    zip and tar go through the standard library (tar with the "data" filter, which refuses
    paths that escape `dest`); rar needs an external tool, the first of RAR_TOOLS that works.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    lower = archive.name.lower()
    try:
        if lower.endswith(".rar"):
            _unpack_rar(archive, dest)
        elif lower.endswith(".zip"):
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(dest)
        elif lower.endswith(TAR_SUFFIXES):
            with tarfile.open(archive) as bundle:
                bundle.extractall(dest, filter="data")
        else:
            kinds = ", ".join(ARCHIVE_SUFFIXES)
            raise UserError(f"cannot unpack {archive}: unknown archive type (expected {kinds})")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise UserError(f"cannot unpack {archive} ({exc}): delete it and run again") from None


def unpack_nested(root: Path) -> None:
    """Unpack archives found inside `root` in place (HMDB51 ships one .rar per class), each
    into a folder named after it, so bare videos still get their class from the folder."""
    for inner in sorted(p for p in root.rglob("*") if p.is_file() and _is_archive(p)):
        unpack_archive(inner, inner.parent / _archive_stem(inner))
        inner.unlink()


def rar_tools() -> list[str]:
    """The RAR-capable tools on PATH, in the order they are tried."""
    return [tool for tool in RAR_TOOLS if shutil.which(tool)]


def _unpack_rar(archive: Path, dest: Path) -> None:
    """Try each RAR tool on PATH in turn; fail with every tool's last message line."""
    tools = rar_tools()
    if not tools:
        raise UserError(f"no tool to unpack {archive.name}: {RAR_INSTALL_HINT}")
    errors = []
    for tool in tools:
        shutil.rmtree(dest)  # a tool that failed half-way leaves partial output
        dest.mkdir()
        result = subprocess.run(
            _rar_command(tool, archive, dest), capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no message"]
        errors.append(f"{tool}: {last[0]}")
    raise UserError(f"cannot unpack {archive} ({'; '.join(errors)}): delete it and run again")


def _rar_command(tool: str, archive: Path, dest: Path) -> list[str]:
    """The command line that makes `tool` extract `archive` into `dest`, overwriting."""
    path = shutil.which(tool) or tool
    if tool == "unrar":
        return [path, "x", "-idq", "-o+", "-y", str(archive), f"{dest}{os.sep}"]
    if tool == "bsdtar":
        return [path, "-x", "-f", str(archive), "-C", str(dest)]
    return [path, "x", "-y", "-bd", f"-o{dest}", str(archive)]


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    """The name without its archive suffix, longest suffix first (`a.tar.gz` -> `a`)."""
    lower = path.name.lower()
    suffix = next(s for s in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True) if lower.endswith(s))
    return path.name[: -len(suffix)]
