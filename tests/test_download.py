"""Dataset download: archives served from 127.0.0.1 (never the network) are fetched, resumed,
unpacked and laid out exactly as the manifests read them; offline failures are one line."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import sys
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from extract.errors import UserError
from pipeline.datasets.download.archives import rar_tools, unpack_archive
from pipeline.datasets.download.http_download import download_file
from pipeline.datasets.download.kinetics_clips import clip_filename, fetch_kinetics_clips
from pipeline.datasets.download.sources import DATASETS_OFFLINE, fetch_dataset

# --- a tiny file server that honours (or ignores) Range, and can cut a transfer short -------


@dataclass
class FileServer:
    root: Path
    url: str
    honour_range: bool = True
    cut_after: int | None = None  # bytes of body sent before the connection is dropped
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def __call__(self, name: str) -> str:
        return f"{self.url}/{name}"


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            server.requests.append((self.path, self.headers.get("Range")))
            path = server.root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            start = int(match.group(1)) if match and server.honour_range else 0
            if match and server.honour_range and start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            payload = body[start:]
            if server.cut_after is not None:
                payload = payload[: server.cut_after]
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def served(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    server = FileServer(root=root, url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()


# --- archive builders ----------------------------------------------------------------------


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return path


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as bundle:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return path


def _rar4_stored(path: Path, files: dict[str, bytes]) -> Path:
    """A RAR 4 archive with uncompressed ("store") entries, written from the format spec so
    the .rar path can be tested without the non-free `rar` program."""

    def block(head_type: int, flags: int, body: bytes) -> bytes:
        fields = bytes([head_type]) + flags.to_bytes(2, "little")
        fields += (7 + len(body)).to_bytes(2, "little") + body
        return (zlib.crc32(fields) & 0xFFFF).to_bytes(2, "little") + fields

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, bytes(6))
    for name, data in files.items():
        encoded = name.encode()
        header = b"".join([
            len(data).to_bytes(4, "little"), len(data).to_bytes(4, "little"), bytes([3]),
            zlib.crc32(data).to_bytes(4, "little"), (0x5A210000).to_bytes(4, "little"),
            bytes([20, 0x30]), len(encoded).to_bytes(2, "little"),
            (0o100644).to_bytes(4, "little"), encoded,
        ])
        out += block(0x74, 0x8000, header) + data
    path.write_bytes(out + block(0x7B, 0x4000, b""))
    return path


def _video_bytes(name: str) -> bytes:
    """Distinct content per file so a test sees a file moved to the wrong place."""
    return f"RIFF-fake-avi:{name}".encode() * 7


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".download" not in p.relative_to(root).parts
    }


# --- UCF101 and HMDB51 layouts -------------------------------------------------------------

UCF_CLASSES = {"ApplyEyeMakeup": 1, "HandstandPushups": 2}
UCF_GROUPS = (1, 8, 9)
UCF_TEST_GROUP = {1: 1, 2: 8, 3: 9}  # split k tests one group, as the official lists do


def _ucf_videos() -> dict[str, bytes]:
    return {
        f"{cls}/v_{cls}_g{g:02d}_c01.avi": _video_bytes(f"{cls}{g}")
        for cls in UCF_CLASSES
        for g in UCF_GROUPS
    }


def _ucf_split_lists(
    videos: dict[str, bytes], spell: dict[str, str] | None = None
) -> dict[str, bytes]:
    """The official `ucfTrainTestlist/` contents: classInd.txt and train/testlist0{1,2,3}.txt
    (train lines carry the 1-based class number). `spell` renames class folders in the lists,
    as the real lists spell a few classes differently from the folders."""
    spell = spell or {}

    def listed(video: str) -> str:
        cls, _, name = video.partition("/")
        return f"{spell.get(cls, cls)}/{name}"

    lists = {"classInd.txt": "".join(f"{i} {c}\n" for c, i in UCF_CLASSES.items()).encode()}
    for k, group in UCF_TEST_GROUP.items():
        tested = [v for v in videos if f"_g{group:02d}_" in v]
        lists[f"trainlist0{k}.txt"] = "".join(
            f"{listed(v)} {UCF_CLASSES[v.split('/')[0]]}\n" for v in videos if v not in tested
        ).encode()
        lists[f"testlist0{k}.txt"] = "".join(f"{listed(v)}\n" for v in tested).encode()
    return lists


def _ucf_fixture(
    served: FileServer, videos_archive: str, spell: dict[str, str] | None = None
) -> tuple[dict[str, str], dict]:
    videos = _ucf_videos()
    lists = _ucf_split_lists(videos, spell)
    splits = "UCF101TrainTestSplits-RecognitionTask.zip"
    _zip(served.root / splits, {f"ucfTrainTestlist/{k}": v for k, v in lists.items()})
    packed = {f"UCF-101/{k}": v for k, v in videos.items()}
    if videos_archive.endswith(".rar"):
        _rar4_stored(served.root / videos_archive, packed)
    else:
        _tar(served.root / videos_archive, packed)
    expected = {**videos, **{f"ucfTrainTestlist/{k}": v for k, v in lists.items()}}
    return {"splits": served(splits), "videos": served(videos_archive)}, expected


def test_ucf101_is_laid_out_as_the_manifest_expects_and_not_fetched_twice(
    served: FileServer, tmp_path: Path
) -> None:
    sources, expected = _ucf_fixture(served, "UCF101.tar.gz")
    out = tmp_path / "data" / "ucf101"

    assert fetch_dataset("ucf101", out, sources=sources, progress=False) == out

    assert _tree(out) == expected
    assert sorted(p.name for p in (out / ".download").iterdir()) == ["splits.done", "videos.done"]
    served_before = len(served.requests)
    fetch_dataset("ucf101", out, sources=sources, progress=False)
    assert len(served.requests) == served_before


def test_hand_placed_ucf101_needs_no_network(served: FileServer, tmp_path: Path) -> None:
    sources, expected = _ucf_fixture(served, "UCF101.tar.gz")
    out = tmp_path / "ucf101"
    for rel, data in expected.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    offline = {key: "http://127.0.0.1:9/" + Path(url).name for key, url in sources.items()}

    fetch_dataset("ucf101", out, sources=offline, progress=False)

    assert _tree(out) == expected


def test_archives_downloaded_by_hand_are_used_offline_and_kept(
    served: FileServer, tmp_path: Path
) -> None:
    sources, expected = _ucf_fixture(served, "UCF101.tar.gz")
    out = tmp_path / "ucf101"
    out.mkdir()
    for url in sources.values():
        shutil.copy(served.root / Path(url).name, out)
    offline = {key: "http://127.0.0.1:9/" + Path(url).name for key, url in sources.items()}

    fetch_dataset("ucf101", out, sources=offline, progress=False)

    archives = {Path(url).name: (out / Path(url).name).read_bytes() for url in sources.values()}
    assert _tree(out) == {**expected, **archives}


def test_hmdb51_nested_class_archives_become_class_folders(
    served: FileServer, tmp_path: Path
) -> None:
    brush = {f"brush_hair/April_brush_hair_u_nm_np1_ba_goo_{i}.avi": _video_bytes(f"b{i}")
             for i in range(2)}
    cartwheel = {f"Bodenturnen_cartwheel_f_cm_np1_le_med_{i}.avi": _video_bytes(f"c{i}")
                 for i in range(2)}  # bare files: the class comes from the archive name
    inner = served.root / "inner"
    inner.mkdir()
    _zip(served.root / "hmdb51_org.zip", {
        "brush_hair.zip": _zip(inner / "b.zip", brush).read_bytes(),
        "cartwheel.tar": _tar(inner / "c.tar", cartwheel).read_bytes(),
    })
    split_files = {}
    for cls, names in (("brush_hair", brush), ("cartwheel", cartwheel)):
        for k in (1, 2, 3):
            lines = "".join(f"{Path(n).name} {1 + i % 2} \n" for i, n in enumerate(names))
            split_files[f"testTrainMulti_7030_splits/{cls}_test_split{k}.txt"] = lines.encode()
    _tar(served.root / "test_train_splits.tar.gz", split_files)
    out = tmp_path / "hmdb51"

    fetch_dataset("hmdb51", out, progress=False, sources={
        "videos": served("hmdb51_org.zip"), "splits": served("test_train_splits.tar.gz")})

    assert _tree(out) == {
        **brush,
        **{f"cartwheel/{k}": v for k, v in cartwheel.items()},
        **split_files,
    }


def test_lists_spelling_a_class_in_another_case_still_find_its_videos(
    served: FileServer, tmp_path: Path
) -> None:
    sources, expected = _ucf_fixture(
        served, "UCF101.tar.gz", spell={"HandstandPushups": "HandStandPushups"}
    )
    out = tmp_path / "ucf101"

    fetch_dataset("ucf101", out, sources=sources, progress=False)

    assert _tree(out) == expected
    assert (out / ".download" / "videos.done").is_file()


def test_archive_missing_listed_videos_is_reported(served: FileServer, tmp_path: Path) -> None:
    sources, _ = _ucf_fixture(served, "UCF101.tar.gz")
    _tar(served.root / "UCF101.tar.gz", {"UCF-101/ApplyEyeMakeup/v_x.avi": b"x"})

    with pytest.raises(UserError, match=r"missing after unpacking .*delete the archive"):
        fetch_dataset("ucf101", tmp_path / "ucf101", sources=sources, progress=False)


@pytest.mark.skipif(not rar_tools(), reason="no RAR tool on PATH (unrar, bsdtar or 7z)")
def test_ucf101_from_a_rar_archive(served: FileServer, tmp_path: Path) -> None:
    sources, expected = _ucf_fixture(served, "UCF101.rar")
    out = tmp_path / "ucf101"

    fetch_dataset("ucf101", out, sources=sources, progress=False)

    assert _tree(out) == expected


def test_rar_without_a_tool_says_which_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _rar4_stored(tmp_path / "hmdb51_org.rar", {"a/b.avi": b"x"})
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    with pytest.raises(UserError) as error:
        unpack_archive(archive, tmp_path / "out")
    assert "hmdb51_org.rar" in str(error.value)
    assert "libarchive-tools" in str(error.value) and "unrar" in str(error.value)


def test_corrupt_archive_is_a_user_error(tmp_path: Path) -> None:
    broken = tmp_path / "UCF101TrainTestSplits-RecognitionTask.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")

    with pytest.raises(UserError, match=r"cannot unpack .*delete it and run again"):
        unpack_archive(broken, tmp_path / "out")


def test_tar_member_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    evil = _tar(tmp_path / "evil.tar", {"../outside.txt": b"x"})

    with pytest.raises(UserError, match="cannot unpack"):
        unpack_archive(evil, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()


# --- downloads: offline, HTTP errors, resume ------------------------------------------------


def test_unreachable_source_is_one_line_saying_what_to_fetch_by_hand(tmp_path: Path) -> None:
    out = tmp_path / "data" / "ucf101"
    sources = {"videos": "http://127.0.0.1:9/UCF101.rar",
               "splits": "http://127.0.0.1:9/UCF101TrainTestSplits-RecognitionTask.zip"}

    with pytest.raises(UserError) as error:
        fetch_dataset("ucf101", out, sources=sources, progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("cannot reach 127.0.0.1:9 (offline?): download UCF101.rar and ")
    assert f"by hand, put them in {out}/ and run again" in message
    assert "docs/download.md" in message


def test_http_error_names_the_url(served: FileServer, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"HTTP 404 .*/missing\.zip") as error:
        download_file(served("missing.zip"), tmp_path / "missing.zip", progress=False)
    assert "\n" not in str(error.value)


def test_partial_download_is_resumed_with_a_range_request(
    served: FileServer, tmp_path: Path
) -> None:
    blob = os.urandom(300_000)
    (served.root / "UCF101.rar").write_bytes(blob)
    dest = tmp_path / "UCF101.rar"
    dest.with_name("UCF101.rar.part").write_bytes(blob[:100_000])

    download_file(served("UCF101.rar"), dest, progress=False)

    assert served.requests == [("/UCF101.rar", "bytes=100000-")]
    assert dest.read_bytes() == blob
    assert not dest.with_name("UCF101.rar.part").exists()


def test_server_without_range_support_restarts_from_zero(
    served: FileServer, tmp_path: Path
) -> None:
    blob = os.urandom(50_000)
    (served.root / "a.zip").write_bytes(blob)
    served.honour_range = False
    dest = tmp_path / "a.zip"
    dest.with_name("a.zip.part").write_bytes(b"stale bytes from another file")

    download_file(served("a.zip"), dest, progress=False)

    assert dest.read_bytes() == blob


def test_cut_transfer_keeps_the_part_file_then_resumes(
    served: FileServer, tmp_path: Path
) -> None:
    blob = os.urandom(200_000)
    (served.root / "a.tar.gz").write_bytes(blob)
    dest = tmp_path / "a.tar.gz"
    served.cut_after = 70_000

    with pytest.raises(UserError, match=r"stopped at 70000 of 200000 bytes.*run again"):
        download_file(served("a.tar.gz"), dest, progress=False)
    assert dest.with_name("a.tar.gz.part").stat().st_size == 70_000

    served.cut_after = None
    download_file(served("a.tar.gz"), dest, progress=False)
    assert served.requests[-1] == ("/a.tar.gz", "bytes=70000-")
    assert dest.read_bytes() == blob


def test_complete_part_file_is_accepted_on_416(served: FileServer, tmp_path: Path) -> None:
    blob = os.urandom(10_000)
    (served.root / "b.zip").write_bytes(blob)
    dest = tmp_path / "b.zip"
    dest.with_name("b.zip.part").write_bytes(blob)

    download_file(served("b.zip"), dest, progress=False)

    assert dest.read_bytes() == blob


def test_file_urls_work_for_local_mirrors(tmp_path: Path) -> None:
    source = tmp_path / "mirror" / "x.zip"
    source.parent.mkdir()
    source.write_bytes(b"0123456789" * 100)

    download_file(source.as_uri(), tmp_path / "x.zip", progress=False)

    assert (tmp_path / "x.zip").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("name", sorted(DATASETS_OFFLINE) + ["imagenet"])
def test_generated_or_unknown_datasets_are_not_downloaded(name: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=name):
        fetch_dataset(name, tmp_path / name, progress=False)


# --- Kinetics ------------------------------------------------------------------------------

FAKE_YTDLP = """\
import sys
args = sys.argv[1:]
url = args[-1]
if "UNAVAILABLE" in url:
    print("ERROR: [youtube] Video unavailable", file=sys.stderr)
    sys.exit(1)
output = args[args.index("--output") + 1].replace("%(ext)s", "mp4")
section = args[args.index("--download-sections") + 1]
with open(output, "w") as handle:
    handle.write(url + " " + section)
"""


def _tool(folder: Path, name: str, source: str) -> None:
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_clip_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    _tool(folder, "yt-dlp", FAKE_YTDLP)
    _tool(folder, "ffmpeg", "")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")


KINETICS_CSV = {
    "train": [("abseiling", "AAAAAAAAAAA", 14, 24), ("archery", "UNAVAILABLE", 0, 10),
              ("archery", "CCCCCCCCCCC", 125, 135)],
    "validate": [("abseiling", "DDDDDDDDDDD", 3, 13)],
    "test": [("archery", "EEEEEEEEEEE", 7, 17)],
}


def _kinetics_annotations(served: FileServer) -> str:
    files = {}
    for split, rows in KINETICS_CSV.items():
        lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
        lines += [f"{label},{yid},{start},{end},{split},0" for label, yid, start, end in rows]
        files[f"kinetics400/{split}.csv"] = ("\n".join(lines) + "\n").encode()
    _tar(served.root / "kinetics400.tar.gz", files)
    return served("kinetics400.tar.gz")


def test_kinetics_clips_are_named_resumed_and_failures_counted(
    served: FileServer, tmp_path: Path, fake_clip_tools: None
) -> None:
    out = tmp_path / "kinetics400"
    sources = {"annotations": _kinetics_annotations(served)}
    existing = out / "train" / clip_filename("CCCCCCCCCCC", 125, 135)
    existing.parent.mkdir(parents=True)
    existing.write_text("downloaded earlier")

    fetch_dataset("kinetics400", out, sources=sources, progress=False, clip_jobs=2)

    assert sorted(p.name for p in (out / "annotations").iterdir()) == [
        "test.csv", "train.csv", "validate.csv"]
    clip = out / "train" / "AAAAAAAAAAA_000014_000024.mp4"
    assert clip.read_text() == "https://www.youtube.com/watch?v=AAAAAAAAAAA *14-24"
    assert (out / "validate" / "DDDDDDDDDDD_000003_000013.mp4").is_file()
    assert (out / "test" / "EEEEEEEEEEE_000007_000017.mp4").is_file()
    assert existing.read_text() == "downloaded earlier"
    assert not list((out / "train").glob("UNAVAILABLE*"))
    assert not list(out.rglob(".clip-*"))

    report = fetch_kinetics_clips(out, progress=False)
    assert (report.requested, report.skipped, report.downloaded, report.failed) == (5, 4, 0, 1)
    log = (out / "download_failures.tsv").read_text().splitlines()
    assert log[1:] == ["train\tUNAVAILABLE\t0\t10\tERROR: [youtube] Video unavailable"]


def test_kinetics_limit_takes_the_first_rows_of_each_chosen_split(
    served: FileServer, tmp_path: Path, fake_clip_tools: None
) -> None:
    out = tmp_path / "kinetics400"
    fetch_dataset("kinetics400", out, progress=False, clips=False,
                  sources={"annotations": _kinetics_annotations(served)})

    report = fetch_kinetics_clips(out, splits=["train"], limit=1, progress=False)

    assert (report.requested, report.downloaded, report.failed) == (1, 1, 0)
    assert [p.name for p in out.rglob("*.mp4")] == ["AAAAAAAAAAA_000014_000024.mp4"]
    with pytest.raises(UserError, match="no annotations for split"):
        fetch_kinetics_clips(out, splits=["val"], progress=False)


def test_kinetics_without_yt_dlp_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    with pytest.raises(UserError, match=r"pip install yt-dlp.*apt-get install ffmpeg"):
        fetch_kinetics_clips(tmp_path, progress=False)
