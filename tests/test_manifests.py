"""Dataset manifests read from fixtures written in each dataset's official layout.

Video files are empty: manifests only look at names and split lists, never decode.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extract.errors import UserError
from pipeline.datasets.base import safe_relative
from pipeline.datasets.manifest import format_summary, is_valid, load_manifest, validate_command
from pipeline.store.format import Split

UCF_CLASSES = ["ApplyEyeMakeup", "Archery", "Basketball"]
UCF_GROUPS = (1, 2, 3, 4)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_crlf(path: Path, lines: list[str]) -> None:
    """Official UCF101/HMDB51 lists use CRLF endings and some lines end in blanks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{line} \r\n" for line in lines).encode())


def ucf_video(class_name: str, group: int) -> str:
    return f"{class_name}/v_{class_name}_g{group:02d}_c01.avi"


def make_ucf101(root: Path, splits_dir: Path | None = None) -> Path:
    """UCF101 with 3 classes x 4 groups; in split k, group k is the test group."""
    lists = splits_dir or root / "ucfTrainTestlist"
    write_crlf(lists / "classInd.txt", [f"{i} {name}" for i, name in enumerate(UCF_CLASSES, 1)])
    for k in (1, 2, 3):
        train, test = [], []
        for label, name in enumerate(UCF_CLASSES, 1):
            for group in UCF_GROUPS:
                touch(root / ucf_video(name, group))
                if group == k:
                    test.append(ucf_video(name, group))
                else:
                    train.append(f"{ucf_video(name, group)} {label}")
        write_crlf(lists / f"trainlist0{k}.txt", train)
        write_crlf(lists / f"testlist0{k}.txt", test)
    return lists


def append_lines(path: Path, lines: list[str]) -> None:
    with path.open("ab") as handle:
        handle.write("".join(f"{line}\r\n" for line in lines).encode())


# --- UCF101 -----------------------------------------------------------------------------------


def test_ucf101_official_layout_gives_labels_and_split_membership(tmp_path: Path) -> None:
    make_ucf101(tmp_path)
    manifest = load_manifest("ucf101", tmp_path)
    assert manifest.classes == UCF_CLASSES
    assert manifest.split_names == ["split1", "split2", "split3"]
    assert len(manifest.videos) == len(UCF_CLASSES) * len(UCF_GROUPS)
    by_id = {entry.id: entry for entry in manifest.videos}
    for label, name in enumerate(UCF_CLASSES):
        for group in UCF_GROUPS:
            entry = by_id[ucf_video(name, group)]
            assert entry.label == label
            # group 4 is never test, so it is train in all three splits
            expected = tuple(Split.TEST if group == k else Split.TRAIN for k in (1, 2, 3))
            assert entry.splits == expected
    assert manifest.count_by_split()["split2"] == {"train": 9, "test": 3, "unused": 0}
    assert manifest.problems.count() == 0
    assert is_valid(manifest)
    assert len(manifest.existing()) == 12


def test_ucf101_lists_spelled_in_another_case_resolve_to_the_files(tmp_path: Path) -> None:
    """Real UCF101: classInd and folders say HandstandPushups, the lists HandStandPushups."""
    lists = tmp_path / "ucfTrainTestlist"
    write_crlf(lists / "classInd.txt", ["1 HandstandPushups"])
    touch(tmp_path / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi")
    touch(tmp_path / "HandstandPushups" / "v_HandStandPushups_g02_c01.avi")
    for k in (1, 2, 3):
        write_crlf(lists / f"trainlist0{k}.txt",
                   ["HandStandPushups/v_HandStandPushups_g01_c01.avi 1"])
        write_crlf(lists / f"testlist0{k}.txt", ["HandStandPushups/v_HandStandPushups_g02_c01.avi"])
    manifest = load_manifest("ucf101", tmp_path)
    assert manifest.problems.count() == 0, manifest.problems.sections()
    assert [entry.id for entry in manifest.videos] == [
        "HandstandPushups/v_HandStandPushups_g01_c01.avi",
        "HandstandPushups/v_HandStandPushups_g02_c01.avi",
    ]
    assert len(manifest.existing()) == 2


def test_ucf101_splits_dir_elsewhere(tmp_path: Path) -> None:
    root, lists = tmp_path / "UCF-101", tmp_path / "lists"
    make_ucf101(root, splits_dir=lists)
    with pytest.raises(UserError, match="give --splits DIR"):
        load_manifest("ucf101", root)
    manifest = load_manifest("ucf101", root, splits_dir=lists)
    assert len(manifest.videos) == 12 and is_valid(manifest)


def test_ucf101_missing_split_file_is_a_clear_user_error(tmp_path: Path) -> None:
    lists = make_ucf101(tmp_path)
    (lists / "testlist02.txt").unlink()
    with pytest.raises(UserError) as caught:
        load_manifest("ucf101", tmp_path)
    message = str(caught.value)
    assert "UCF101 split files not found" in message and "testlist02.txt" in message
    assert "trainlist01.txt" not in message  # only what is really absent is named
    assert "\n" not in message


def test_missing_root_is_a_user_error(tmp_path: Path) -> None:
    for kind in ("ucf101", "hmdb51", "kinetics400", "folder"):
        with pytest.raises(UserError, match="root not found"):
            load_manifest(kind, tmp_path / "nowhere")


def test_unknown_kind_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ucf101, hmdb51, kinetics400, folder"):
        load_manifest("imagenet", tmp_path)


def test_ucf101_reports_each_kind_of_problem(tmp_path: Path) -> None:
    lists = make_ucf101(tmp_path)
    outside = touch(tmp_path.parent / f"{tmp_path.name}-outside" / "secret.avi")
    link = tmp_path / "Archery" / "v_Archery_g09_c01.avi"
    link.symlink_to(outside)
    append_lines(
        lists / "trainlist01.txt",
        [
            "Bowling/v_Bowling_g01_c01.avi 1",  # class not in classInd
            "Archery/v_Archery_g01_c01.avi 7",  # label number not in classInd
            f"{ucf_video('Archery', 2)} 2",  # same video twice in trainlist01
            f"{ucf_video('Archery', 3)} 1",  # label 1 disagrees with folder Archery (2)
            "../escape/v_x.avi 1",
            "Archery/../../escape.avi 2",
            "/etc/passwd 1",
            "Archery/v_Archery_g01_c01.avi one two",
            "Archery/v_Archery_g05_c01.avi 2",  # listed, not on disk
            "Archery/v_Archery_g09_c01.avi 2",  # symlink out of the root
        ],
    )
    append_lines(lists / "testlist01.txt", [ucf_video("Basketball", 2)])  # train and test
    manifest = load_manifest("ucf101", tmp_path)
    problems = manifest.problems
    assert [p.where for p in problems.unknown_classes] == [
        "trainlist01.txt:10",
        "trainlist01.txt:11",
    ]
    assert [p.where for p in problems.duplicates] == ["trainlist01.txt:12"]
    assert {p.where for p in problems.conflicts} == {"trainlist01.txt:13", "testlist01.txt:4"}
    assert [p.where for p in problems.unsafe[:3]] == [f"trainlist01.txt:{n}" for n in (14, 15, 16)]
    assert problems.unsafe[3].where == "Archery/v_Archery_g09_c01.avi"
    assert "outside the dataset root" in problems.unsafe[3].message
    assert [p.where for p in problems.malformed] == ["trainlist01.txt:17"]
    assert [p.where for p in problems.missing] == ["Archery/v_Archery_g05_c01.avi"]
    ids = {entry.id for entry in manifest.videos}
    assert "Archery/v_Archery_g09_c01.avi" not in ids
    assert not any(".." in video_id or video_id.startswith("/") for video_id in ids)
    # a missing file stays in the official split but is not among the existing videos
    assert "Archery/v_Archery_g05_c01.avi" in ids
    assert "Archery/v_Archery_g05_c01.avi" not in {e.id for e in manifest.existing()}
    assert not is_valid(manifest)
    summary = format_summary(manifest)
    for title in ("missing files: 1", "unknown classes: 2", "duplicates: 1", "unsafe paths: 4"):
        assert title in summary
    assert "trainlist01.txt:17" in summary and summary.endswith("INVALID: fix the problems above")


# --- HMDB51 -----------------------------------------------------------------------------------

HMDB = {
    "cartwheel": {"a.avi": (1, 2, 0), "b.avi": (2, 1, 1), "c.avi": (0, 1, 2)},
    "brush_hair": {"d.avi": (1, 1, 2), "e.avi": (2, 0, 1)},
}


def make_hmdb51(root: Path) -> Path:
    lists = root / "testTrainMulti_7030_splits"
    for class_name, videos in HMDB.items():
        for name in videos:
            touch(root / class_name / name)
        for k in (1, 2, 3):
            lines = [f"{name} {codes[k - 1]}" for name, codes in videos.items()]
            write_crlf(lists / f"{class_name}_test_split{k}.txt", lines)
    return lists


def test_hmdb51_split_codes_train_test_unused(tmp_path: Path) -> None:
    make_hmdb51(tmp_path)
    manifest = load_manifest("hmdb51", tmp_path)
    assert manifest.classes == ["brush_hair", "cartwheel"]
    by_id = {entry.id: entry for entry in manifest.videos}
    assert set(by_id) == {f"{c}/{n}" for c, videos in HMDB.items() for n in videos}
    assert by_id["cartwheel/a.avi"].splits == (Split.TRAIN, Split.TEST, Split.UNUSED)
    assert by_id["cartwheel/c.avi"].splits == (Split.UNUSED, Split.TRAIN, Split.TEST)
    assert by_id["brush_hair/e.avi"].label == 0 and by_id["cartwheel/b.avi"].label == 1
    assert manifest.count_by_split()["split1"] == {"train": 2, "test": 2, "unused": 1}
    assert is_valid(manifest)


def test_hmdb51_missing_split_file_is_a_user_error(tmp_path: Path) -> None:
    lists = make_hmdb51(tmp_path)
    (lists / "cartwheel_test_split3.txt").unlink()
    with pytest.raises(UserError, match=r"cartwheel_test_split3\.txt .*give --splits DIR"):
        load_manifest("hmdb51", tmp_path)
    with pytest.raises(UserError, match="HMDB51 split files not found"):
        load_manifest("hmdb51", tmp_path, splits_dir=tmp_path / "empty")


def test_hmdb51_rejects_unsafe_and_malformed_lines(tmp_path: Path) -> None:
    lists = make_hmdb51(tmp_path)
    append_lines(
        lists / "cartwheel_test_split1.txt",
        ["../brush_hair/d.avi 1", "/abs/x.avi 1", "C:\\x.avi 1", "f.avi 3", "a.avi 1"],
    )
    manifest = load_manifest("hmdb51", tmp_path)
    assert len(manifest.problems.unsafe) == 3
    assert [p.where for p in manifest.problems.malformed] == ["cartwheel_test_split1.txt:7"]
    assert [p.where for p in manifest.problems.duplicates] == ["cartwheel_test_split1.txt:8"]
    assert len(manifest.videos) == 5 and not is_valid(manifest)


# --- Kinetics-400 -----------------------------------------------------------------------------

K400_HEADER = "label,youtube_id,time_start,time_end,split,is_cc"


def make_kinetics(root: Path, layout: str) -> dict[str, str]:
    """Annotation CSVs (the test one without labels) and clips in `layout`; one train clip is
    absent, as on any real download. Returns {youtube_id: expected id}."""
    notes = root / "annotations"
    notes.mkdir(parents=True)
    (notes / "train.csv").write_text(
        f"{K400_HEADER}\nair drumming,aaaaaaaaaaa,5,15,train,0\n"
        "abseiling,bbbbbbbbbbb,0,10,train,0\nabseiling,gone_______,3,13,train,1\n"
    )
    (notes / "validate.csv").write_text(f"{K400_HEADER}\nabseiling,ccccccccccc,12,22,val,0\n")
    (notes / "test.csv").write_text("youtube_id,time_start,time_end,split\nddddddddddd,1,11,test\n")
    clips = {
        "aaaaaaaaaaa": ("train", "air_drumming", "aaaaaaaaaaa_000005_000015.mp4"),
        "bbbbbbbbbbb": ("train", "abseiling", "bbbbbbbbbbb_000000_000010.mp4"),
        "ccccccccccc": ("val", "abseiling", "ccccccccccc_000012_000022.mkv"),
        "ddddddddddd": ("test", None, "ddddddddddd_000001_000011.mp4"),
    }
    expected = {}
    for youtube_id, (split, label, name) in clips.items():
        parts = {"flat": [name], "split": [split, name], "label": [split, label or "", name]}
        rel = "/".join(p for p in parts[layout] if p)
        touch(root / rel)
        expected[youtube_id] = rel
    return expected


@pytest.mark.parametrize("layout", ["flat", "split", "label"])
def test_kinetics_layouts_and_missing_clips_are_not_fatal(tmp_path: Path, layout: str) -> None:
    expected = make_kinetics(tmp_path, layout)
    manifest = load_manifest("kinetics400", tmp_path)
    assert manifest.classes == ["abseiling", "air drumming"]
    by_id = {entry.id: entry for entry in manifest.videos}
    assert set(by_id) == set(expected.values())
    assert by_id[expected["aaaaaaaaaaa"]].label == 1
    assert by_id[expected["aaaaaaaaaaa"]].splits == (Split.TRAIN,)
    assert by_id[expected["ccccccccccc"]].splits == (Split.TEST,)
    unlabelled = by_id[expected["ddddddddddd"]]
    assert (unlabelled.label, unlabelled.splits) == (-1, (Split.UNUSED,))
    assert [p.where for p in manifest.problems.missing] == ["train.csv:4"]
    assert "gone_______" + "_000003_000013" in manifest.problems.missing[0].message
    assert manifest.count_by_split() == {"train/val": {"train": 2, "test": 1, "unused": 1}}
    assert is_valid(manifest)
    summary, valid = validate_command("kinetics400", tmp_path)
    assert valid and "missing files: 1 (allowed" in summary and summary.endswith("valid")


def test_kinetics_without_any_clip_is_invalid(tmp_path: Path) -> None:
    make_kinetics(tmp_path, "flat")
    for clip in tmp_path.glob("*_0000*"):
        clip.unlink()
    summary, valid = validate_command("kinetics400", tmp_path)
    assert not valid and "missing files: 5" in summary and "INVALID: no videos found" in summary


def test_kinetics_duplicates_malformed_and_splits_option(tmp_path: Path) -> None:
    make_kinetics(tmp_path, "split")
    single_csv = tmp_path / "extra.csv"
    single_csv.write_text(
        f"{K400_HEADER}\nabseiling,bbbbbbbbbbb,0,10,train,0\nabseiling,../../etc,0,10,train,0\n"
        "abseiling,eeeeeeeeeee,zero,10,train,0\nabseiling,fffffffffff,0,10,holdout,0\n"
    )
    manifest = load_manifest("kinetics400", tmp_path, splits_dir=single_csv)
    problems = manifest.problems
    assert [p.where for p in problems.unsafe] == ["extra.csv:3"]
    assert [p.where for p in problems.malformed] == ["extra.csv:4", "extra.csv:5"]
    assert [v.id for v in manifest.videos] == ["train/bbbbbbbbbbb_000000_000010.mp4"]
    assert not is_valid(manifest)
    (tmp_path / "annotations" / "copy.csv").write_text(
        (tmp_path / "annotations" / "validate.csv").read_text()
    )
    duplicated = load_manifest("kinetics400", tmp_path)
    assert [p.where for p in duplicated.problems.duplicates] == ["validate.csv:2"]


def test_kinetics_missing_annotations_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Kinetics-400 annotation CSVs not found"):
        load_manifest("kinetics400", tmp_path)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text("name,url\nx,y\n")
    with pytest.raises(UserError, match="no column youtube_id, time_start, time_end"):
        load_manifest("kinetics400", tmp_path)


# --- folder -----------------------------------------------------------------------------------


def make_folder(root: Path, order: list[str]) -> None:
    for class_name in order:
        for i in range(10):
            touch(root / class_name / f"clip{i:02d}.mp4")
        touch(root / class_name / "notes.txt")
        touch(root / class_name / ".hidden.mp4")
    (root / "empty").mkdir()


def test_folder_classes_and_deterministic_holdout(tmp_path: Path) -> None:
    make_folder(tmp_path / "a", ["zebra", "Cat", "dog"])
    make_folder(tmp_path / "b", ["dog", "zebra", "Cat"])  # created in another order
    first = load_manifest("folder", tmp_path / "a")
    second = load_manifest("folder", tmp_path / "b")
    assert first.classes == ["Cat", "dog", "zebra"]
    assert first.split_names == ["holdout20"]
    splits_a = {e.id: (e.label, e.splits) for e in first.videos}
    assert splits_a == {e.id: (e.label, e.splits) for e in second.videos}
    assert len(splits_a) == 30 and all(video_id.endswith(".mp4") for video_id in splits_a)
    for label in range(3):
        codes = [e.splits[0] for e in first.videos if e.label == label]
        assert codes.count(Split.TEST) == 2 and codes.count(Split.TRAIN) == 8
    assert is_valid(first)


def test_folder_rejects_splits_option_and_reports_outside_symlink(tmp_path: Path) -> None:
    make_folder(tmp_path / "root", ["cat"])
    with pytest.raises(UserError, match="no split files"):
        load_manifest("folder", tmp_path / "root", splits_dir=tmp_path)
    outside = touch(tmp_path / "elsewhere" / "x.mp4")
    (tmp_path / "root" / "cat" / "linked.mp4").symlink_to(outside)
    inside = tmp_path / "root" / "cat" / "clip00.mp4"
    (tmp_path / "root" / "cat" / "alias.mp4").symlink_to(inside)
    manifest = load_manifest("folder", tmp_path / "root")
    assert [p.where for p in manifest.problems.unsafe] == ["cat/linked.mp4"]
    assert "cat/alias.mp4" in {e.id for e in manifest.videos}  # a link within the root is fine
    assert not is_valid(manifest)


# --- path safety ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "base", "expected"),
    [
        ("Archery/v_a.avi", (), "Archery/v_a.avi"),
        ("Archery\\v_a.avi", (), "Archery/v_a.avi"),
        ("./Archery//v_a.avi", (), "Archery/v_a.avi"),
        ("Archery/../Bowling/v.avi", (), "Bowling/v.avi"),
        ("../v.avi", (), None),
        ("a/../../v.avi", (), None),
        ("/etc/passwd", (), None),
        ("C:/x.avi", (), None),
        ("\\\\server\\share\\x.avi", (), None),
        ("", (), None),
        ("x.avi", ("cls",), "cls/x.avi"),
        ("../other/x.avi", ("cls",), None),
    ],
)
def test_safe_relative(raw: str, base: tuple[str, ...], expected: str | None) -> None:
    assert safe_relative(raw, base) == expected


def test_symlinked_root_is_not_outside_itself(tmp_path: Path) -> None:
    make_ucf101(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "link")
    manifest = load_manifest("ucf101", tmp_path / "link")
    assert manifest.problems.count() == 0 and len(manifest.existing()) == 12
