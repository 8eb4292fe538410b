"""Damage in a feature store: chunks that are not on disk, or whose bytes fail their checksum.

Without a check, zarr reads a missing chunk as its fill value and flipped bytes as other
numbers, so damaged rows would stay "done". Stores made now checksum every inner chunk
(zarr's crc32c codec; each shard index has its own) and fill their arrays with values a
written row never holds (NaN features and times, status 255, error "(unwritten)"), so which
chunks must exist follows from the rows' status (`_required`). `find_damage` reads every shard
index (cheap: done before each `features` run) and, when `full`, decodes every chunk too
(`store info --verify`, `features --repair`); `repair.py` marks exactly the damaged rows
pending so the run recomputes them. Readers go through `read_rows`, which turns damage into one
line. Format 1 stores have no checksums and zero fills: only missing chunks of done rows are
found there. docs/store-format.md, "Damage detection", has the rules.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import google_crc32c  # zarr's own crc32c codec uses it (a dependency of zarr)
import numpy as np
import zarr
from tqdm import tqdm
from zarr.abc.store import SuffixByteRequest
from zarr.codecs import Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from pipeline.store.format import Status, StoreError

if TYPE_CHECKING:
    from pipeline.store.feature_store import FeatureStore

UNWRITTEN_STATUS = 255  # fill of `<m>/status`: a status chunk that is not on disk reads as this
UNWRITTEN_ERROR = "(unwritten)"  # fill of `<m>/error`
# Inner-chunk codecs after the serializer: zarr's default compressor plus a checksum.
CHECKSUMMED = (ZstdCodec(level=0, checksum=False), Crc32cCodec())
DECODE_ERRORS = (ValueError, RuntimeError, TypeError, IndexError)  # what zarr raises on bad bytes
MISSING = "missing chunk"
INDEX = "shard index unreadable: truncated or overwritten shard"
SHOWN_IDS = 5
NO_SHARD = 2**64 - 1  # the shard index's "no chunk here" offset and length


@dataclass(frozen=True)
class Damage:
    """Rows [start, stop) of one array whose chunk(s) are missing or unreadable, and why."""

    array: str
    start: int
    stop: int
    reason: str

    @property
    def owner(self) -> str:
        """The modality the array belongs to, or 'videos'."""
        return self.array.split("/")[0]


@dataclass
class DamageReport:
    """What `find_damage` found: the damaged chunks and, per modality, the rows they cost."""

    path: Path
    full: bool
    rows: int
    seconds: float
    damages: list[Damage]
    affected: dict[str, np.ndarray]  # modality or "videos" -> rows whose record is damaged
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)  # their status: count
    ids: dict[str, list[str]] = field(default_factory=dict)  # the first few of their ids

    @property
    def damaged(self) -> bool:
        return bool(self.damages)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "check": "full" if self.full else "chunk keys",
                "rows": self.rows, "seconds": round(self.seconds, 3), "damaged": self.damaged,
                "modalities": {name: {"rows": len(rows), "done": self.kinds[name].get("done", 0),
                                      "status": self.kinds[name], "row_numbers": rows.tolist(),
                                      "ids": self.ids[name]}
                               for name, rows in self.affected.items()},
                "damage": [{"array": d.array, "rows": [d.start, d.stop - 1], "reason": d.reason}
                           for d in self.damages]}

    def describe(self) -> str:
        """`store info --verify`: per modality how many rows are damaged, which, and why."""
        how = "every chunk decoded" if self.full else "chunk keys checked"
        lines = [f"{self.path}: {self.rows} rows verified ({how}, {self.seconds:.1f} s)"]
        for name, rows in self.affected.items():
            damages = [d for d in self.damages if d.owner == name]
            if not damages:
                lines.append(f"{name}: no damage")
                continue
            shown = ", ".join(self.ids[name]) + (", ..." if len(rows) > SHOWN_IDS else "")
            what = ", ".join(f"{count} {kind}" for kind, count in self.kinds[name].items())
            lines.append(f"{name}: {len(rows)} damaged rows ({what}): {shown}" if len(rows)
                         else f"{name}: damaged chunks hold only pending rows")
            lines += [f"  {d.array} rows {d.start}-{d.stop - 1}: {d.reason}" for d in damages]
        if self.damaged:
            lines.append("damage found: rerun `cli.py features` with --repair to recompute "
                         "exactly these rows")
        return "\n".join(lines)

    def note(self) -> str:
        """One line for `features` after it repaired damage, e.g. 'rgb 2 rows (4-5)'."""
        parts = [f"{name} {len(rows)} ({row_text(rows)})"
                 for name, rows in self.affected.items() if len(rows)]
        return (f"note: damaged data in {self.path}: rows marked pending and recomputed: "
                f"{'; '.join(parts)}")


def row_text(rows: np.ndarray, spans: int = 4) -> str:
    """'0-7, 12' for sorted row numbers (the first few spans, then '...')."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return "none"
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    parts = [f"{s[0]}-{s[-1]}" if len(s) > 1 else f"{s[0]}" for s in np.split(rows, breaks)]
    return ", ".join(parts[:spans]) + (", ..." if len(parts) > spans else "")


def damage_message(path: Path, damages: list[Damage]) -> str:
    """The one line a reader or writer stops with when it meets damaged data."""
    where = "; ".join(f"'{d.array}' rows {d.start}-{d.stop - 1} ({d.reason})"
                      for d in damages[:3])
    if any(d.array == "videos/id" for d in damages):
        return (f"{path}: damaged data in {where}: the store no longer knows which videos "
                f"those rows hold; rerun `cli.py features` with --overwrite to start it over")
    return (f"{path}: damaged data in {where}: run `cli.py store info --verify {path}` and "
            f"rerun `cli.py features` with --repair")


def marks_unwritten(array: zarr.Array) -> bool:
    """Whether the array's fill value is one that written data never holds (format 2)."""
    fill = array.fill_value
    if isinstance(fill, str):
        return fill == UNWRITTEN_ERROR
    if np.issubdtype(array.dtype, np.floating):
        return bool(np.isnan(fill))
    return np.issubdtype(array.dtype, np.integer) and int(fill) == UNWRITTEN_STATUS


def _required(store: FeatureStore, name: str, array: zarr.Array,
              statuses: dict[str, np.ndarray]) -> np.ndarray:
    """(rows,) bool: rows whose chunk of `name` must be on disk, given their status."""
    owner, part = name.split("/", 1)
    need = np.zeros(array.shape[0], dtype=bool)
    if owner == "videos":
        need[:store.n] = part == "id"  # ids are never empty; labels may equal their fill
        return need
    status, marked = statuses[owner], marks_unwritten(array)
    if part == "status":
        need[:store.n] = marked  # written for every row when the store was created
    elif part == "mask":
        need[:store.n] = status == Status.DONE  # a done row has a valid position
    elif part in ("features", "time", "error") and marked:
        need[:store.n] = status != Status.PENDING
    elif part == "features":
        need[:store.n] = status == Status.DONE  # format 1: zero fill, as failed rows hold
    return need


def shard_rows(array: zarr.Array) -> tuple[int, int]:
    """(rows per shard file, rows per inner chunk)."""
    chunk = int(array.chunks[0])
    return (int(array.shards[0]) if array.shards else chunk), chunk


def shard_file(array: zarr.Array, shard: int) -> Path:
    """The file of one shard (of one chunk, unsharded) of an array in a local store."""
    key = array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))
    return Path(array.store.root) / array.path / key


def _shard_key(array: zarr.Array, shard: int) -> str:
    return f"{array.path}/{array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))}"


def delete_shard(array: zarr.Array, shard: int) -> None:
    """Remove one shard file (or object, in a store named by URL), if it is there."""
    if isinstance(array.store, LocalStore):
        shard_file(array, shard).unlink(missing_ok=True)
    else:
        sync(array.store.delete(_shard_key(array, shard)))


def _shard_exists(array: zarr.Array, shard: int) -> bool:
    if isinstance(array.store, LocalStore):
        return shard_file(array, shard).is_file()
    return bool(sync(array.store.exists(_shard_key(array, shard))))


def _shard_tail(array: zarr.Array, shard: int, size: int) -> tuple[int, bytes]:
    """(shard size, its last `size` bytes) of a shard that exists."""
    if isinstance(array.store, LocalStore):
        with open(shard_file(array, shard), "rb") as handle:
            handle.seek(0, 2)
            total = handle.tell()
            handle.seek(max(0, total - size))
            return total, handle.read(size)
    key = _shard_key(array, shard)
    total = int(sync(array.store.getsize(key)))
    tail = sync(array.store.get(key, default_buffer_prototype(),
                                SuffixByteRequest(min(size, total))))
    return total, b"" if tail is None else tail.to_bytes()


def _present_chunks(store: FeatureStore, array: zarr.Array, shard: int) -> np.ndarray | None:
    """Per inner chunk of one shard, whether the shard index says it is there; None if the
    shard file is missing. Raises ValueError if the index itself is unreadable."""
    if not _shard_exists(array, shard):
        return None
    if not array.shards:
        return np.ones(1, dtype=bool)
    codec = array.metadata.codecs[0]
    if not (isinstance(codec, ShardingCodec) and codec.index_location.value == "end"
            and isinstance(codec.index_codecs[-1], Crc32cCodec)):
        raise StoreError(f"{store.path}: {array.path} is sharded another way than this "
                         f"project writes: its shards cannot be checked")
    per_shard = tuple(s // c for s, c in zip(array.shards, array.chunks, strict=True))
    size = 16 * int(np.prod(per_shard)) + 4
    total, tail = _shard_tail(array, shard, size)
    if total < size:
        raise ValueError("shard shorter than its index")
    if google_crc32c.value(tail[:-4]).to_bytes(4, "little") != tail[-4:]:
        raise ValueError("shard index checksum mismatch")
    index = np.frombuffer(tail[:-4], dtype="<u8").reshape(*per_shard, 2)
    present = index[..., 0] != NO_SHARD
    if np.any(index[present][:, 0] + index[present][:, 1] > total - size):
        raise ValueError("shard index points past the end of the file")
    return present.reshape(per_shard[0], -1).all(axis=1)


def _reason(exc: Exception) -> str:
    return "checksum mismatch" if "checksum" in str(exc) else f"unreadable ({exc})"


def _scan_shard(store: FeatureStore, name: str, array: zarr.Array, shard: int,
                required: np.ndarray | None, decode: bool) -> list[Damage]:
    """Damage in one shard file of `name`: missing required chunks, and (if `decode`)
    chunks that do not decode; `required` None means every present chunk is checked only."""
    per_shard, chunk = shard_rows(array)
    rows = array.shape[0]
    start, stop = shard * per_shard, min(rows, (shard + 1) * per_shard)
    spans = [(a, min(a + chunk, stop)) for a in range(start, stop, chunk)]
    try:
        present = _present_chunks(store, array, shard)
    except ValueError:
        return [Damage(name, start, stop, INDEX)]
    if present is None:
        present = np.zeros(len(spans), dtype=bool)
    found = [Damage(name, a, b, MISSING) for (a, b), there in zip(spans, present, strict=False)
             if not there and required is not None and required[a:b].any()]
    if decode and present.any():
        try:
            array[start:stop]
        except DECODE_ERRORS:
            for (a, b), there in zip(spans, present, strict=False):
                try:
                    if there:
                        array[a:b]
                except DECODE_ERRORS as exc:
                    found.append(Damage(name, a, b, _reason(exc)))
    return sorted(found, key=lambda d: d.start)


def shard_numbers(array: zarr.Array) -> range:
    if 0 in array.shape:
        return range(0)
    per_shard, _ = shard_rows(array)
    return range(-(-array.shape[0] // per_shard))


def locate(store: FeatureStore, name: str, start: int, stop: int) -> list[Damage]:
    """The damaged chunks of `name` between rows start and stop (after a read failed)."""
    array = store.array(name)
    per_shard, _ = shard_rows(array)
    found = []
    for shard in range(start // per_shard, -(-stop // per_shard)):
        found += [d for d in _scan_shard(store, name, array, shard, None, decode=True)
                  if d.stop > start and d.start < stop]
    return _merged(found)


def find_damage(store: FeatureStore, full: bool = True, progress: bool = False
                ) -> DamageReport:
    """Check every array of the store: shard indexes and required chunks, and when `full`
    every chunk's checksum (status arrays, read at open anyway, are always decoded)."""
    began = time.monotonic()
    statuses = {name: store.recorded_status(name)[0] for name in store.modalities}
    work = [(name, shard) for name in store.array_names()
            for shard in shard_numbers(store.array(name))]
    damages: list[Damage] = []
    arrays: dict[str, tuple[zarr.Array, np.ndarray]] = {}
    for name, shard in tqdm(work, desc="verifying", unit="shard", disable=not progress):
        if name not in arrays:
            array = store.array(name)
            arrays[name] = (array, _required(store, name, array, statuses))
        array, required = arrays[name]
        damages += _scan_shard(store, name, array, shard, required,
                               decode=full or name.endswith("/status"))
    damages = _merged(damages)
    report = DamageReport(store.path, full, store.n, 0.0, damages,
                          _affected(store, damages, statuses))
    for name, rows in report.affected.items():
        report.kinds[name] = _kinds(store, name, rows)
        report.ids[name] = [store.ids[int(r)] for r in rows[:SHOWN_IDS]]
    report.seconds = time.monotonic() - began
    return report


def _kinds(store: FeatureStore, name: str, rows: np.ndarray) -> dict[str, int]:
    """How many of `rows` were done, failed, absent, or of unknown status (status lost)."""
    if name not in store.modalities:
        return {"videos": len(rows)} if len(rows) else {}
    status, lost = store.recorded_status(name)
    kinds = Counter("unknown" if lost[r] else Status(int(status[r])).label for r in rows)
    return dict(sorted(kinds.items()))


def _merged(damages: list[Damage]) -> list[Damage]:
    """Adjacent damaged chunks of one array, for one reason, as one stretch of rows."""
    merged: list[Damage] = []
    for damage in sorted(damages, key=lambda d: (d.array, d.start)):
        last = merged[-1] if merged else None
        if last and (last.array, last.reason, last.stop) == (damage.array, damage.reason,
                                                              damage.start):
            merged[-1] = Damage(last.array, last.start, damage.stop, last.reason)
        else:
            merged.append(damage)
    return merged


def _affected(store: FeatureStore, damages: list[Damage], statuses: dict[str, np.ndarray]
              ) -> dict[str, np.ndarray]:
    """Per modality (and 'videos') the rows below store.n whose recorded result is damaged:
    every row of a damaged status or video chunk, the finished rows of a damaged data chunk
    (pending rows are recomputed anyway)."""
    hit = {name: np.zeros(store.n, dtype=bool) for name in (*store.modalities, "videos")}
    for damage in damages:
        span = slice(damage.start, min(damage.stop, store.n))
        if damage.owner == "videos" or damage.array.endswith("/status"):
            hit[damage.owner][span] = True
        else:
            hit[damage.owner][span] |= statuses[damage.owner][span] != Status.PENDING
    return {name: np.flatnonzero(rows) for name, rows in hit.items()}


def read_status(array: zarr.Array, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(status, lost) of the first `rows` rows: a row whose status chunk is missing or does
    not decode is lost, and reads as pending (never as done)."""
    try:
        status = array[:rows]
    except DECODE_ERRORS:
        _, chunk = shard_rows(array)
        status = np.full(rows, UNWRITTEN_STATUS, dtype=np.uint8)
        for a in range(0, rows, chunk):
            try:
                status[a:a + chunk] = array[a:min(a + chunk, rows)]
            except DECODE_ERRORS:
                continue
    lost = ~np.isin(status, [int(s) for s in Status])
    status = np.where(lost, Status.PENDING, status).astype(np.uint8)
    return status, lost


def read_rows(store: FeatureStore, name: str, selection: Any) -> np.ndarray:
    """`store.array(name)[selection]`, or one StoreError line if the rows read are damaged:
    a chunk that does not decode, or a finished row whose chunk is not on disk."""
    array = store.array(name)
    numbers = np.arange(array.shape[0])[selection]
    try:
        values = array[selection]
    except DECODE_ERRORS as exc:
        span = (int(numbers.min()), int(numbers.max()) + 1) if len(numbers) else (0, 0)
        damages = locate(store, name, *span)
        if not damages:
            raise  # not damage: e.g. a shard replaced while being read (readers retry)
        raise StoreError(damage_message(store.path, damages)) from exc
    owner, part = name.split("/", 1)
    if owner in store.modalities and len(numbers):
        lost = numbers[_unwritten(store, owner, part, array, values, numbers)]
        if len(lost):
            spans = [Damage(name, int(r[0]), int(r[-1]) + 1, MISSING)
                     for r in np.split(lost, np.flatnonzero(np.diff(lost) != 1) + 1)]
            raise StoreError(damage_message(store.path, spans))
    return values


def _unwritten(store: FeatureStore, modality: str, part: str, array: zarr.Array,
               values: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """(len(numbers),) bool: finished rows whose values are the fill a missing chunk reads
    as (a whole row of NaN, an unwritten error, no valid position in a done row)."""
    if part == "status":
        return (numbers < store.n) & ~np.isin(values, [int(s) for s in Status])
    status, _ = store.recorded_status(modality)
    known = numbers < len(status)
    row_status = np.full(len(numbers), Status.PENDING, dtype=np.uint8)
    row_status[known] = status[numbers[known]]
    finished = row_status != Status.PENDING
    if values.size == 0:
        return np.zeros(len(numbers), dtype=bool)
    if part == "mask":
        return (row_status == Status.DONE) & ~values.reshape(len(values), -1).any(axis=1)
    if not marks_unwritten(array):
        return np.zeros(len(numbers), dtype=bool)
    if part == "error":
        return finished & (values == UNWRITTEN_ERROR)
    return finished & np.isnan(values.reshape(len(values), -1)).all(axis=1)


def rewrite_array(array: zarr.Array, values: np.ndarray) -> None:
    """Write every row of `array` (labels, splits on resume): the old content does not
    matter, so a damaged shard in the way is removed rather than decoded."""
    try:
        array[:] = values
    except DECODE_ERRORS:
        for shard in shard_numbers(array):
            delete_shard(array, shard)
        array[:] = values


@contextmanager
def write_errors(store: FeatureStore, name: str, rows: np.ndarray) -> Iterator[None]:
    """A write that had to decode a damaged chunk (to merge rows into it) stops with one line."""
    try:
        yield
    except DECODE_ERRORS as exc:
        damages = locate(store, name, int(rows.min()), int(rows.max()) + 1) if len(rows) else []
        if not damages:
            raise
        raise StoreError(damage_message(store.path, damages)) from exc
