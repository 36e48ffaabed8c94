"""Library scanning and incremental planning, on folders the tests build (planning on SQLite and PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from test_db import database_url  # noqa: F401  (the fixture: a fresh SQLite or PostgreSQL database URL)

from lbsearch.errors import ConfigError, MediaError
from lbsearch.ingest import scan as scan_module
from lbsearch.ingest.scan import HASH_SAMPLE_BYTES, FileTask, Plan, ScanRoot, content_hash, plan, scan
from lbsearch.storage.database import Database
from lbsearch.storage.records import FileVectors, NewVector

DIM = 4


def write(path: Path, content: bytes = b"media") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def found(roots: list, **options: bool) -> dict[str, tuple[str, str]]:
    """{path relative to the first root's parent: (modality, item key)} of a scan."""
    base = Path(os.path.realpath(roots[0].path if isinstance(roots[0], ScanRoot) else roots[0])).parent
    return {str(Path(file.path).relative_to(base)): (file.modality, file.item_key) for file in scan(roots, **options)}


def test_modality_comes_from_the_extension(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for name in [
        "a.mp4",
        "b.MOV",
        "c.mkv",
        "d.webm",
        "e.avi",
        "f.m4v",
        "g.wav",
        "h.FLAC",
        "i.mp3",
        "j.ogg",
        "k.opus",
        "l.m4a",
        "m.aac",
        "n.jpg",
        "o.JPEG",
        "p.png",
        "q.webp",
        "r.bmp",
        "s.tif",
        "t.tiff",
        "notes.txt",
        "movie.mp4.part",
        "noext",
        "folder.jpg/u.png",
    ]:
        write(lib / name)
    os.mkfifo(lib / "pipe.jpg")  # not a regular file
    modalities = {Path(path).name: modality for path, (modality, _) in found([lib]).items()}
    assert modalities == {
        **dict.fromkeys(["a.mp4", "b.MOV", "c.mkv", "d.webm", "e.avi", "f.m4v"], "video"),
        **dict.fromkeys(["g.wav", "h.FLAC", "i.mp3", "j.ogg", "k.opus", "l.m4a", "m.aac"], "audio"),
        **dict.fromkeys(["n.jpg", "o.JPEG", "p.png", "q.webp", "r.bmp", "s.tif", "t.tiff", "u.png"], "image"),
    }


def test_files_carry_their_stat_and_real_root(tmp_path: Path) -> None:
    photo = write(tmp_path / "lib" / "deep" / "er" / "a.jpg", b"x" * 123)
    os.utime(photo, ns=(1_000_000_000, 1_234_567_891))
    [file] = scan([tmp_path / "lib" / "deep" / ".."])
    assert (file.path, file.root) == (os.path.realpath(photo), os.path.realpath(tmp_path / "lib"))
    assert (file.size, file.mtime_ns, file.item_key) == (123, 1_234_567_891, f"file:{file.path}")


def test_hidden_files_and_folders_are_skipped_unless_asked(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "a.jpg")
    write(lib / ".b.jpg")
    write(lib / ".thumbnails" / "c.jpg")
    write(lib / "sub" / ".cache" / "d.jpg")
    assert sorted(found([lib])) == ["lib/a.jpg"]
    assert sorted(found([lib], include_hidden=True)) == [
        "lib/.b.jpg",
        "lib/.thumbnails/c.jpg",
        "lib/a.jpg",
        "lib/sub/.cache/d.jpg",
    ]


@pytest.mark.timeout(30)
def test_symlinks_never_lead_out_of_the_root(tmp_path: Path) -> None:
    lib, outside = tmp_path / "lib", tmp_path / "outside"
    write(lib / "albums" / "a.jpg")
    write(outside / "secret.jpg")
    (lib / "linked_outside").symlink_to(outside, target_is_directory=True)
    (lib / "linked_file.jpg").symlink_to(outside / "secret.jpg")
    (lib / "favourites").symlink_to(lib / "albums", target_is_directory=True)  # inside: same files
    (lib / "albums" / "loop").symlink_to(lib / "albums", target_is_directory=True)  # a cycle must not hang
    (lib / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    assert sorted(found([lib])) == ["lib/albums/a.jpg"]  # each file once, under its real path


def test_depth_and_thermal_come_from_folder_names(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for name in [
        "depth/a.png",
        "Thermal/b.jpg",
        "INFRARED/c.jpg",
        "ir/d.jpg",
        "photos/e.jpg",
        "depthmaps/f.png",
        "depth/clip.mp4",
        "depth/closeups/g.png",
        "ir/depth/h.png",
    ]:
        write(lib / name)
    modalities = {path: modality for path, (modality, _) in found([lib]).items()}
    assert modalities == {
        "lib/depth/a.png": "depth",
        "lib/Thermal/b.jpg": "thermal",
        "lib/INFRARED/c.jpg": "thermal",
        "lib/ir/d.jpg": "thermal",
        "lib/photos/e.jpg": "image",
        "lib/depthmaps/f.png": "image",  # a whole folder name, not a part of one
        "lib/depth/clip.mp4": "video",  # folders only say what kind of image a file is
        "lib/depth/closeups/g.png": "depth",
        "lib/ir/depth/h.png": "depth",  # the nearest folder decides
    }


def test_a_root_option_decides_what_its_images_are(tmp_path: Path) -> None:
    kinect, flir, lib = tmp_path / "kinect", tmp_path / "flir", tmp_path / "lib"
    write(kinect / "0001.png")
    write(flir / "thermal" / "0002.jpg")
    write(flir / "clip.mp4")
    write(lib / "depth" / "0003.png")
    roots = [ScanRoot(kinect, as_modality="depth"), ScanRoot(flir, as_modality="image"), lib]
    modalities = {path: modality for path, (modality, _) in found(roots).items()}
    assert modalities == {
        "kinect/0001.png": "depth",
        "flir/thermal/0002.jpg": "image",  # the option wins over the folder name
        "flir/clip.mp4": "video",
        "lib/depth/0003.png": "depth",
    }
    # Overlapping roots: the innermost one's option applies.
    inner = {path: modality for path, (modality, _) in found([lib, ScanRoot(lib / "depth", "thermal")]).items()}
    assert inner == {"lib/depth/0003.png": "thermal"}


def test_frames_of_one_scene_in_sibling_folders_share_an_item(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for name in [
        "nyu/kitchen/rgb/0001.jpg",
        "nyu/kitchen/depth/0001.png",
        "nyu/kitchen/thermal/0001.jpg",
        "nyu/kitchen/rgb/0002.jpg",
        "nyu/bedroom/image/0001.jpg",
        "nyu/bedroom/depth/0001.png",
        "LLVIP/visible/train/010001.jpg",
        "LLVIP/infrared/train/010001.jpg",
        "LLVIP/infrared/test/010001.jpg",
        "holiday/beach.jpg",
        "holiday/beach.mp4",
        "holiday/beach.wav",
    ]:
        write(lib / name)
    items = {path: key for path, (_, key) in found([lib]).items()}
    real_lib = os.path.realpath(lib)
    kitchen = f"scene:{real_lib}/nyu/kitchen/0001"
    assert items["lib/nyu/kitchen/rgb/0001.jpg"] == items["lib/nyu/kitchen/depth/0001.png"] == kitchen
    assert items["lib/nyu/kitchen/thermal/0001.jpg"] == kitchen
    assert items["lib/nyu/kitchen/rgb/0002.jpg"] == f"scene:{real_lib}/nyu/kitchen/0002"
    assert items["lib/nyu/bedroom/image/0001.jpg"] == items["lib/nyu/bedroom/depth/0001.png"] != kitchen
    llvip = f"scene:{real_lib}/LLVIP/train/010001"
    assert items["lib/LLVIP/visible/train/010001.jpg"] == items["lib/LLVIP/infrared/train/010001.jpg"] == llvip
    assert items["lib/LLVIP/infrared/test/010001.jpg"] == f"scene:{real_lib}/LLVIP/test/010001"
    # Everything else is its own item; a video's sound track is embedded under the video's item.
    for name in ["beach.jpg", "beach.mp4", "beach.wav"]:
        assert items[f"lib/holiday/{name}"] == f"file:{real_lib}/holiday/{name}"

    # Roots that are the modality folders pair up the same way.
    paired = scan([ScanRoot(lib / "nyu" / "kitchen" / "rgb"), ScanRoot(lib / "nyu" / "kitchen" / "depth")])
    assert {file.item_key for file in paired if Path(file.path).stem == "0001"} == {kitchen}


def test_the_shared_media_folder(media: Path) -> None:
    files = {str(Path(file.path).relative_to(os.path.realpath(media))): file for file in scan([media])}
    assert {path: file.modality for path, file in files.items()} == {
        **{f"video/{name}": "video" for name in ["0.mp4", "1.mp4", "portrait_360x640.mp4"]},
        **{f"audio/{name}": "audio" for name in ["0.wav", "1.wav", "long_stereo_44k_25s.wav"]},
        **{f"depth/{name}": "depth" for name in ["0.png", "1.png", "nyu_like_480x640.png"]},
        **{f"thermal/{name}": "thermal" for name in ["0.jpg", "1.jpg", "flir_like_512x640.jpg"]},
        **{f"image/{name}": "image" for name in ["0.jpg", "1.jpg", "wide_200x900.png"]},
    }
    # image/, depth/ and thermal/ are sibling frame folders: frames named alike form one item.
    assert files["image/0.jpg"].item_key == files["depth/0.png"].item_key == files["thermal/0.jpg"].item_key
    assert files["video/0.mp4"].item_key != files["audio/0.wav"].item_key
    assert all(file.size == os.path.getsize(file.path) for file in files.values())
    hashes = {path: content_hash(file.path) for path, file in files.items()}
    assert len(set(hashes.values())) == len(hashes)  # 15 different files, 15 different hashes
    assert hashes["audio/long_stereo_44k_25s.wav"] == content_hash(media / "audio" / "long_stereo_44k_25s.wav")


def test_a_bad_root_is_a_config_error(tmp_path: Path) -> None:
    photo = write(tmp_path / "a.jpg")
    with pytest.raises(ConfigError, match=r"missing does not exist"):
        scan([tmp_path / "missing"])
    with pytest.raises(ConfigError, match=r"a\.jpg is not a folder"):
        scan([photo])
    with pytest.raises(ConfigError, match=r"cannot index as 'video'; the choices are image, depth, thermal"):
        scan([ScanRoot(tmp_path, as_modality="video")])
    with pytest.raises(ConfigError, match="given twice"):
        scan([ScanRoot(tmp_path, "depth"), ScanRoot(tmp_path / ".", "thermal")])


def test_content_hash_reads_size_and_three_samples(tmp_path: Path) -> None:
    small = write(tmp_path / "small.jpg", b"a" * 1000)
    assert content_hash(small) == content_hash(write(tmp_path / "copy.jpg", b"a" * 1000))
    assert content_hash(small) != content_hash(write(tmp_path / "other.jpg", b"a" * 999 + b"b"))

    size = 8 * HASH_SAMPLE_BYTES
    data = bytearray(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    big = write(tmp_path / "big.mp4", bytes(data))
    reference = content_hash(big)
    for offset, changes in [(0, True), (size // 2, True), (size - 1, True), (2 * HASH_SAMPLE_BYTES, False)]:
        changed = bytearray(data)
        changed[offset] ^= 0xFF
        assert (content_hash(write(big, bytes(changed))) != reference) == changes, offset
    assert content_hash(write(big, bytes(data) + b"\0")) != reference  # same samples, another size
    with pytest.raises(MediaError, match=r"nothing\.jpg: cannot be read"):
        content_hash(tmp_path / "nothing.jpg")


# ------------------------------------------------------------------------------------------ planning


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:  # noqa: F811
    database = Database.open(database_url)
    yield database
    database.close()


def carry_out(db: Database, work: Plan) -> None:
    """What the pipeline does with a plan, minus decoding: one random vector per file to embed."""
    model = db.register_model("tiny", "image", "w", DIM)
    rng = np.random.default_rng(0)
    file_ids = record(db, work.to_embed)
    db.store_vectors([FileVectors(i, [NewVector(model, "image", rng.standard_normal(DIM))]) for i in file_ids])
    for move in [*work.moved, *work.touched]:
        file = move.file
        db.relocate_file(
            move.file_id,
            path=file.path,
            root=file.root,
            size=file.size,
            mtime_ns=file.mtime_ns,
            item_key=file.item_key,
        )
    db.delete_files([record.id for record in work.deleted])


def record(db: Database, tasks: list[FileTask]) -> list[int]:
    """Record files to embed as pending, the way the pipeline does before decoding them."""
    return db.upsert_files([{**asdict(task.file), "content_hash": task.content_hash} for task in tasks])


def names(tasks: list) -> list[str]:
    return sorted(Path(task.file.path if hasattr(task, "file") else task.path).name for task in tasks)


def test_a_second_plan_of_an_unchanged_library_only_stats(db: Database, tmp_path: Path, monkeypatch) -> None:
    lib = tmp_path / "lib"
    for name in ["a.jpg", "b.jpg", "sub/c.jpg"]:
        write(lib / name, name.encode())
    first = plan(db, [lib])
    assert names(first.new) == ["a.jpg", "b.jpg", "c.jpg"]
    assert [task.content_hash for task in first.new] == [content_hash(task.file.path) for task in first.new]
    carry_out(db, first)

    def no_hashing(path: object) -> str:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(scan_module, "content_hash", no_hashing)
    second = plan(db, [lib])
    assert second.summary() == {
        "new": 0,
        "changed": 0,
        "retry": 0,
        "touched": 0,
        "moved": 0,
        "deleted": 0,
        "unchanged": 3,
    }


def test_a_plan_sorts_every_kind_of_change(db: Database, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for name in ["same.jpg", "edited.jpg", "touched.jpg", "gone.jpg", "old_name.jpg", "twin1.jpg", "twin2.jpg"]:
        write(lib / name, name.encode())
    write(lib / "twin2.jpg", b"twin")
    write(lib / "twin1.jpg", b"twin")
    carry_out(db, plan(db, [lib]))
    old_name_id = db.file_by_path(os.path.realpath(lib / "old_name.jpg")).id

    write(lib / "edited.jpg", b"new content")
    os.utime(lib / "touched.jpg", ns=(1, 1))
    (lib / "gone.jpg").unlink()
    (lib / "sub").mkdir()
    (lib / "old_name.jpg").rename(lib / "sub" / "new_name.jpg")
    (lib / "twin1.jpg").rename(lib / "twin3.jpg")
    write(lib / "fresh.jpg", b"fresh")

    work = plan(db, [lib])
    assert names(work.new) == ["fresh.jpg"]
    assert names(work.changed) == ["edited.jpg"]
    assert names(work.touched) == ["touched.jpg"]
    assert names(work.deleted) == ["gone.jpg"]
    assert names(work.unchanged) == ["same.jpg", "twin2.jpg"]
    assert sorted((Path(m.old_path).name, Path(m.file.path).name) for m in work.moved) == [
        ("old_name.jpg", "new_name.jpg"),
        ("twin1.jpg", "twin3.jpg"),
    ]
    [rename] = [m for m in work.moved if m.file_id == old_name_id]
    assert rename.file.path == os.path.realpath(lib / "sub" / "new_name.jpg")
    assert work.changed[0].file_id == db.file_by_path(work.changed[0].file.path).id

    ids_before = set(db.vector_ids(db.models()[0].id, "image"))
    carry_out(db, work)
    assert db.file(old_name_id).path == rename.file.path  # the same row, its vectors kept
    ids_after = set(db.vector_ids(db.models()[0].id, "image"))
    assert len(ids_after - ids_before) == 2  # only fresh.jpg and edited.jpg were embedded
    assert plan(db, [lib]).summary()["unchanged"] == 7


def test_unfinished_and_failed_files(db: Database, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "interrupted.jpg", b"1")
    write(lib / "broken.jpg", b"2")
    record(db, plan(db, [lib]).new)  # a run recorded both, then was killed before embedding them
    broken = db.file_by_path(os.path.realpath(lib / "broken.jpg"))
    db.mark_files_failed({broken.id: "truncated"})

    work = plan(db, [lib])
    assert names(work.retry) == ["interrupted.jpg"] and names(work.unchanged) == ["broken.jpg"]
    assert names(plan(db, [lib], retry_failed=True).retry) == ["broken.jpg", "interrupted.jpg"]
    write(lib / "broken.jpg", b"fixed")
    assert names(plan(db, [lib]).changed) == ["broken.jpg"]


def test_a_file_moved_in_from_a_root_not_scanned_is_recognised(db: Database, tmp_path: Path) -> None:
    inbox, archive = tmp_path / "inbox", tmp_path / "archive"
    write(inbox / "a.jpg", b"a")
    write(inbox / "kept.jpg", b"kept")
    carry_out(db, plan(db, [inbox]))
    archive.mkdir()
    (inbox / "a.jpg").rename(archive / "a.jpg")
    write(archive / "copy_of_kept.jpg", b"kept")  # same content, but the original is still there

    work = plan(db, [archive])
    assert [(Path(m.old_path).parent.name, Path(m.file.path).parent.name) for m in work.moved] == [("inbox", "archive")]
    assert names(work.new) == ["copy_of_kept.jpg"]
    assert work.deleted == []  # inbox was not scanned: its files are not judged


def test_a_file_moved_into_another_modality_folder_is_embedded_again(db: Database, tmp_path: Path) -> None:
    scene = tmp_path / "scene"
    write(scene / "rgb" / "0001.png", b"frame")
    carry_out(db, plan(db, [scene]))
    (scene / "depth").mkdir()
    (scene / "rgb" / "0001.png").rename(scene / "depth" / "0001.png")
    work = plan(db, [scene])
    assert work.moved == []
    assert [(task.file.modality, task.file_id) for task in work.new] == [("depth", None)]
    assert names(work.deleted) == ["0001.png"]


def test_changing_a_root_option_re_embeds_its_images(db: Database, tmp_path: Path) -> None:
    kinect = tmp_path / "kinect"
    write(kinect / "0001.png")
    carry_out(db, plan(db, [kinect]))
    work = plan(db, [ScanRoot(kinect, as_modality="depth")])
    assert [(task.file.modality, task.file_id is not None) for task in work.changed] == [("depth", True)]


def test_a_file_that_cannot_be_read_is_planned_without_a_hash(db: Database, tmp_path: Path, monkeypatch) -> None:
    lib = tmp_path / "lib"
    write(lib / "ok.jpg", b"ok")
    unreadable = os.path.realpath(write(lib / "unreadable.jpg", b"?"))
    hash_readable = content_hash

    def hash_or_fail(path: str | Path) -> str:
        if str(path) == unreadable:  # as root, permissions cannot make a file unreadable: pretend
            raise MediaError(path, "cannot be read: Permission denied")
        return hash_readable(path)

    monkeypatch.setattr(scan_module, "content_hash", hash_or_fail)
    work = plan(db, [lib])
    assert {Path(task.file.path).name: task.content_hash is None for task in work.new} == {
        "ok.jpg": False,
        "unreadable.jpg": True,
    }
    [file_id] = record(db, [task for task in work.new if task.content_hash is None])
    db.mark_files_failed({file_id: "cannot be read: Permission denied"})
    # Recorded as failed, it is left alone until it changes or a retry is asked for.
    assert names(plan(db, [lib]).unchanged) == ["unreadable.jpg"]
    assert names(plan(db, [lib], retry_failed=True).retry) == ["unreadable.jpg"]
