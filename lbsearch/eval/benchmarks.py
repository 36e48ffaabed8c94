"""Adapters for the paper's benchmarks, read from their standard layouts on the user's disk, and their evaluation.

None of these can be downloaded here; each adapter reads the layout the dataset ships with (or the one the
official evaluation code expects) and fails with a `DatasetError` naming the missing file. Layouts:

- MSR-VTT 1k-A (video retrieval, one caption per video): ``MSRVTT_JSFUSION_test.csv`` (``key,vid_key,video_id,
  sentence``) and the videos as ``<video_id>.mp4`` under ``videos/all/``, ``MSRVTT_Videos/`` or ``videos/``.
- MSVD (video retrieval, all captions per video): ``raw-captions.pkl`` (video id -> list of token lists),
  ``test_list.txt`` and ``YouTubeClips/<id>.avi``.
- Clotho evaluation (audio retrieval, five captions per file): ``clotho_captions_evaluation.csv``
  (``file_name,caption_1..caption_5``) and the WAVs under ``evaluation/`` (or ``clotho_audio_evaluation/``).
- ESC-50 (audio classification): the official repository layout ``meta/esc50.csv`` + ``audio/*.wav`` (all five
  folds, or the ones asked for), or the class-folder layout the official evaluation uses (``<class>/*.wav``).
- NYU-D v2 (depth), LLVIP and FLIR (thermal) classification: class folders (``<class>/<file>``), as the official
  evaluation reads them with ImageFolder; folder names give the class names ("dining_room" -> "dining room").

Zero-shot classification uses the modality's official templates (`lbsearch.search.zeroshot`); retrieval uses
`lbsearch.eval.metrics` (multi-caption where a dataset has several captions per item).
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lbsearch import modalities
from lbsearch.errors import DatasetError
from lbsearch.eval.metrics import cosine_similarity, multi_caption_retrieval_metrics
from lbsearch.models.encoder import Encoder
from lbsearch.search.zeroshot import accuracy, build_classifier


@dataclass(frozen=True)
class ClassificationSet:
    name: str
    modality: str
    files: list[Path]
    labels: list[int]
    class_names: list[str]


@dataclass(frozen=True)
class RetrievalSet:
    """Items and their captions; ``caption_items[c]`` is the item caption ``c`` describes."""

    name: str
    modality: str
    files: list[Path]
    captions: list[str]
    caption_items: list[int]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{path}: missing ({what})")
    return path


def _extensions(modality: str) -> list[str]:
    """The file extensions (with the dot) that ingestion reads for a modality: the same set here."""
    return sorted(f".{e}" for e in modalities.lookup(modality).extensions)


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    _require(path, "the dataset's caption/label table")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a UTF-8 CSV table ({exc})") from exc
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
        raise DatasetError(f"{path}: expected columns {list(columns)}, missing {missing}")
    if not rows:
        raise DatasetError(f"{path}: the table has no rows")
    return rows


def _first_folder(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root}: none of the media folders {list(names)} exists")


def _media_file(folder: Path, stem: str, modality: str) -> Path:
    for extension in _extensions(modality):
        if (folder / f"{stem}{extension}").is_file():
            return folder / f"{stem}{extension}"
    raise DatasetError(f"{folder}: no {modality} file named {stem} with one of {_extensions(modality)}")


def msrvtt_1ka(root: str | Path) -> RetrievalSet:
    """MSR-VTT 1k-A test: 1000 videos, one caption each."""
    root = Path(root)
    rows = _read_csv(root / "MSRVTT_JSFUSION_test.csv", ("video_id", "sentence"))
    folder = _first_folder(root, ("videos/all", "MSRVTT_Videos", "videos"))
    files = [_media_file(folder, row["video_id"], "video") for row in rows]
    return RetrievalSet("msrvtt-1ka", "video", files, [row["sentence"] for row in rows], list(range(len(rows))))


class _PlainUnpickler(pickle.Unpickler):
    """Reads pickles of plain containers only: a caption file has no reason to import anything."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain lists/dicts/strings expected")


def msvd(root: str | Path) -> RetrievalSet:
    """MSVD test split: every caption of each test video is a query."""
    root = Path(root)
    path = _require(root / "raw-captions.pkl", "MSVD captions")
    try:
        with path.open("rb") as handle:
            captions: dict[str, list[list[str]]] = _PlainUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"{path}: not a plain caption pickle ({exc})") from exc
    ids = _require(root / "test_list.txt", "MSVD test list").read_text().split()
    folder = _first_folder(root, ("YouTubeClips", "videos"))
    files, texts, owners = [], [], []
    for index, video_id in enumerate(ids):
        if video_id not in captions:
            raise DatasetError(f"{path}: no captions for test video {video_id}")
        files.append(_media_file(folder, video_id, "video"))
        for caption in captions[video_id]:
            if not isinstance(caption, (str, list)):
                raise DatasetError(f"{path}: a caption of {video_id} is neither text nor a token list")
            texts.append(caption if isinstance(caption, str) else " ".join(caption))
            owners.append(index)
    return RetrievalSet("msvd", "video", files, texts, owners)


def clotho(root: str | Path) -> RetrievalSet:
    """Clotho evaluation split: five captions per audio file."""
    root = Path(root)
    columns = ("file_name", *(f"caption_{i}" for i in range(1, 6)))
    rows = _read_csv(root / "clotho_captions_evaluation.csv", columns)
    folder = _first_folder(root, ("evaluation", "clotho_audio_evaluation", "audio"))
    files, texts, owners = [], [], []
    for index, row in enumerate(rows):
        files.append(_require(folder / row["file_name"], "a Clotho audio file"))
        for column in columns[1:]:
            texts.append(row[column])
            owners.append(index)
    return RetrievalSet("clotho", "audio", files, texts, owners)


def class_folders(root: str | Path, modality: str, name: str) -> ClassificationSet:
    """ImageFolder layout: one folder per class (sorted, as ImageFolder numbers them), media files inside."""
    root = Path(_require(Path(root), f"{name} folder"))
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected one folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:  # one class would score every item right
        raise DatasetError(f"{root}: expected one folder per class, found {len(classes)} folder(s)")
    files, labels = [], []
    extensions = _extensions(modality)
    for label, folder in enumerate(classes):
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() in extensions:
                files.append(path)
                labels.append(label)
    if not files:
        raise DatasetError(f"{root}: no {modality} files ({extensions}) in the class folders")
    return ClassificationSet(name, modality, files, labels, [c.replace("_", " ") for c in classes])


def esc50(root: str | Path, folds: Sequence[int] | None = None) -> ClassificationSet:
    """ESC-50: the official repository layout (``meta/esc50.csv``), else class folders."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        if (root / "audio").is_dir():  # the repository layout without its table: not a class folder
            raise DatasetError(f"{meta}: missing (the ESC-50 label table beside audio/)")
        return class_folders(root, "audio", "esc50")
    rows = _read_csv(meta, ("filename", "fold", "target", "category"))
    try:
        rows = [row for row in rows if folds is None or int(row["fold"]) in folds]
        targets = [int(row["target"]) for row in rows]
    except ValueError as exc:
        raise DatasetError(f"{meta}: fold and target must be whole numbers ({exc})") from exc
    names = {target: row["category"].replace("_", " ") for target, row in zip(targets, rows, strict=True)}
    order = sorted(names)
    files = [_require(root / "audio" / row["filename"], "an ESC-50 clip") for row in rows]
    labels = [order.index(target) for target in targets]
    return ClassificationSet("esc50", "audio", files, labels, [names[t] for t in order])


BENCHMARKS: dict[str, Callable[[Path], ClassificationSet | RetrievalSet]] = {
    "msrvtt": msrvtt_1ka,
    "msvd": msvd,
    "clotho": clotho,
    "esc50": esc50,
    "nyud": lambda root: class_folders(root, "depth", "nyud"),
    "llvip": lambda root: class_folders(root, "thermal", "llvip"),
    "flir": lambda root: class_folders(root, "thermal", "flir"),
}


def load_benchmark(name: str, root: str | Path) -> ClassificationSet | RetrievalSet:
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name](Path(root))


def _embed(encoder: Encoder, files: Sequence[Path], batch_size: int) -> torch.Tensor:
    chunks = []
    for start in range(0, len(files), batch_size):
        batch = torch.stack([encoder.preprocess(path) for path in files[start : start + batch_size]])
        chunks.append(encoder.encode(batch))
    return torch.cat(chunks)


def evaluate_benchmark(encoder: Encoder, dataset: ClassificationSet | RetrievalSet,
                       batch_size: int = 16) -> dict[str, Any]:
    """Zero-shot top-1/top-5 (classification) or R@k/MdR/MnR both ways (retrieval), as the paper reports."""
    if encoder.modality != dataset.modality:
        raise DatasetError(f"{dataset.name} is a {dataset.modality} benchmark; the encoder is {encoder.modality}")
    items = _embed(encoder, dataset.files, batch_size)
    if isinstance(dataset, ClassificationSet):
        classifier = build_classifier(dataset.class_names, dataset.modality, encoder.encode_text)
        ks = tuple(k for k in (1, 5) if k <= len(dataset.class_names))
        scores = accuracy(items, classifier, dataset.labels, ks)
        return {"benchmark": dataset.name, "n": len(dataset.files), **{f"top{k}": v for k, v in scores.items()}}
    sim = cosine_similarity(encoder.encode_text(dataset.captions, batch_size=256), items)
    both = multi_caption_retrieval_metrics(sim, dataset.caption_items)
    return {"benchmark": dataset.name, "n": len(dataset.files), "text_to_item": both.text_to_item.to_dict(),
            "item_to_text": both.item_to_text.to_dict()}
