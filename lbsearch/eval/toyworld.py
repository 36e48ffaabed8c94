"""Evaluation on a toy-world test split with the official protocols, and the issue's bars.

``evaluate_toyworld(encoders, seed)`` renders a fresh world with that seed, embeds one scene per attribute
combination of the test split (and of the held-out-combination split) with every encoder given, and returns a
JSON-ready dict:

- ``zero_shot``: top-1 of classifying each attribute a modality carries, with the modality's official prompt
  templates averaged per class (`lbsearch.search.zeroshot`); class names come from the training grammar
  (`lbsearch.train.data.class_name`: "circle", "red thing", "thing moving left", ...);
- ``text_to_video`` / ``text_to_image``: retrieval with the scenes' four captions each (every caption a query;
  item->text scores an item by its best caption), R@1/R@5/R@10, median and mean rank (`lbsearch.eval.metrics`);
- ``text_to_audio`` / ``_depth`` / ``_thermal``: those carry only some attributes, so R@1 counts a top hit that
  agrees with the caption on them (text->audio: the shape);
- ``emergent``: X->Y between modalities never trained together; R@1 counts a top hit that agrees with the
  query on the attributes both modalities carry (audio->video: the shape);
- ``joint``: video+audio -> caption (the sum of the two unit embeddings, `lbsearch.search.fusion.combine_query_parts`)
  against video alone.

Scenes are embedded from in-memory renders by default, or from the files of a written library
(``from_files=True``: MP4/WAV/PNG decoded by the same preprocessors ingestion uses).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbsearch.errors import ConfigError
from lbsearch.eval.metrics import cosine_similarity, label_relevance, multi_caption_retrieval_metrics, retrieval_metrics
from lbsearch.models.encoder import Encoder
from lbsearch.search.fusion import combine_query_parts
from lbsearch.search.templates import templates_for
from lbsearch.search.zeroshot import accuracy, build_classifier
from lbsearch.toyworld import (
    CARRIED_BY,
    SOUNDS,
    VISIBLE_ATTRIBUTES,
    LibraryLayout,
    RenderConfig,
    Scene,
    World,
    WorldSpec,
    read_manifest,
    write_library,
)
from lbsearch.train.data import ToyDataset, class_name

# Attributes each modality's zero-shot classifier is asked about ("sound": the shape's sound, by its name).
ZERO_SHOT_TASKS: dict[str, tuple[str, ...]] = {m: (*(a for a in CARRIED_BY[m] if a != "sound"),) for m in CARRIED_BY}
ZERO_SHOT_TASKS["audio"] = ("shape", "sound")
EMERGENT_PAIRS = (("audio", "video"), ("audio", "image"), ("depth", "image"), ("thermal", "image"),
                  ("depth", "video"), ("thermal", "video"))

# The bars, on the test split: (path into the split's results, threshold).
BARS: dict[str, tuple[tuple[str, ...], float]] = {
    "zero-shot shape from audio": (("zero_shot", "audio", "shape"), 0.9),
    "zero-shot shape from depth": (("zero_shot", "depth", "shape"), 0.9),
    "zero-shot shape from thermal": (("zero_shot", "thermal", "shape"), 0.9),
    "zero-shot colour from image": (("zero_shot", "image", "colour"), 0.9),
    "zero-shot shape from image": (("zero_shot", "image", "shape"), 0.9),
    "zero-shot direction from video": (("zero_shot", "video", "direction"), 0.9),
    "text->video R@1": (("text_to_video", "R@1"), 0.5),
    "audio->video top hit has the shape": (("emergent", "audio->video", "R@1"), 0.8),
}


def render_config_for(encoders: Mapping[str, Encoder]) -> RenderConfig:
    """The render size and frame count the encoders were trained at."""
    sizes = {e.config.vision.image_size[0] for m, e in encoders.items() if m != "audio"}
    if len(sizes) > 1:
        raise ConfigError(f"the encoders disagree on the input size: {sorted(sizes)}")
    frames = encoders["video"].config.vision.num_frames if "video" in encoders else RenderConfig().num_frames
    return RenderConfig(size=sizes.pop() if sizes else RenderConfig().size, num_frames=frames)


def split_scenes(world: World, split: str, count: int | None = None) -> list[Scene]:
    """The first ``count`` scenes of a split (default: one per combination the split allows, all different)."""
    combinations = len(world.spec.split_combinations(split))
    if count is not None and count > combinations:
        # Past that the split repeats combinations, and with them captions: a caption would have several right
        # answers, while the retrieval metrics score one scene per caption.
        raise ConfigError(
            f"the {split} split has {combinations} attribute combinations: ask for at most that many scenes"
        )
    return world.scenes(split, count or combinations)


def embed_arrays(encoders: Mapping[str, Encoder], scenes: Sequence[Scene], world: World,
                 batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Embed in-memory renders of the scenes with every encoder."""
    render = render_config_for(encoders)
    audio = encoders.get("audio")
    grid = (audio.config.vision.num_mel_bins, audio.config.vision.target_length) if audio else (1, 1)
    split = scenes[0].split
    dataset = ToyDataset.build(world, split, dict.fromkeys(encoders, len(scenes)), render, grid)
    if [s.id for s in dataset.scenes] != [s.id for s in scenes]:
        raise ConfigError("embed_arrays needs the first scenes of a split, in order")
    out = {}
    for modality, encoder in encoders.items():
        chunks = [
            encoder.encode(dataset.inputs(modality, range(start, min(start + batch_size, len(scenes))),
                                          encoder.config.vision))
            for start in range(0, len(scenes), batch_size)
        ]
        out[modality] = torch.cat(chunks)
    return out


def embed_files(encoders: Mapping[str, Encoder], scenes: Sequence[Scene], folder: str | Path,
                batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Write the scenes as a library under ``folder`` and embed its files through each encoder's preprocessor."""
    render = render_config_for(encoders)
    write_library(folder, scenes, render, LibraryLayout(modalities=tuple(encoders), mux_audio=False))
    entries = {entry.scene.id: entry for entry in read_manifest(folder)}
    out = {}
    for modality, encoder in encoders.items():
        inputs = torch.stack([encoder.preprocess(entries[s.id].files[modality]) for s in scenes])
        out[modality] = encoder.encode(inputs, batch_size=batch_size)
    return out


class ClassifierCache:
    """Zero-shot classifiers, built once per language tower, template set and class list.

    One language tower serves every checkpoint of a set and both splits ask for the same classes, so most
    requests repeat (image and thermal even share their templates).
    """

    def __init__(self) -> None:
        self._built: dict[tuple, torch.Tensor] = {}

    def get(self, encoder: Encoder, modality: str, names: Sequence[str]) -> torch.Tensor:
        key = (id(encoder.text), templates_for(modality), tuple(names))
        if key not in self._built:
            self._built[key] = build_classifier(names, modality, encoder.encode_text)
        return self._built[key]


def _zero_shot(encoders: Mapping[str, Encoder], embeddings: Mapping[str, torch.Tensor], scenes: Sequence[Scene],
               spec: WorldSpec, classifiers: ClassifierCache) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for modality, encoder in encoders.items():
        results[modality] = {}
        for task in ZERO_SHOT_TASKS[modality]:
            # "sound" classifies the shape by naming its sound ("a sound of low hum.").
            attribute = "shape" if task == "sound" else task
            options = list(spec.values[attribute])
            names = [class_name(task, SOUNDS[v] if task == "sound" else v) for v in options]
            labels = [options.index(s.attributes[attribute]) for s in scenes]
            classifier = classifiers.get(encoder, modality, names)
            results[modality][task] = accuracy(embeddings[modality], classifier, labels, ks=(1,))[1]
    return results


def _text_retrieval(encoder: Encoder, modality: str, items: torch.Tensor, scenes: Sequence[Scene]) -> dict[str, Any]:
    captions = [caption for scene in scenes for caption in scene.captions]
    owners = np.repeat(np.arange(len(scenes)), [len(s.captions) for s in scenes])
    sim = cosine_similarity(encoder.encode_text(captions), items)
    both = multi_caption_retrieval_metrics(sim, owners)
    return {**both.text_to_item.to_dict(), "item_to_text": both.item_to_text.to_dict()}


def _text_agreement(encoder: Encoder, modality: str, items: torch.Tensor, scenes: Sequence[Scene]) -> dict[str, Any]:
    """Caption -> item where the item carries only some attributes: a hit agrees on those."""
    carried = [a for a in VISIBLE_ATTRIBUTES if a in CARRIED_BY[modality]]
    labels = [tuple(s.attributes[a] for a in carried) for s in scenes]
    captions = [caption for scene in scenes for caption in scene.captions]
    caption_labels = [label for label, scene in zip(labels, scenes, strict=True) for _ in scene.captions]
    sim = cosine_similarity(encoder.encode_text(captions), items)
    return {**retrieval_metrics(sim, label_relevance(caption_labels, labels), ks=(1, 5)).to_dict(),
            "agree_on": carried}


def _emergent(embeddings: Mapping[str, torch.Tensor], scenes: Sequence[Scene]) -> dict[str, dict[str, float]]:
    results = {}
    for query, target in EMERGENT_PAIRS:
        if query not in embeddings or target not in embeddings:
            continue
        shared = [a for a in VISIBLE_ATTRIBUTES if a in CARRIED_BY[query] and a in CARRIED_BY[target]]
        labels = [tuple(s.attributes[a] for a in shared) for s in scenes]
        sim = cosine_similarity(embeddings[query], embeddings[target])
        metrics = retrieval_metrics(sim, label_relevance(labels, labels), ks=(1, 5))
        results[f"{query}->{target}"] = {**metrics.to_dict(), "agree_on": shared}
    return results


def _joint(encoder: Encoder, embeddings: Mapping[str, torch.Tensor], scenes: Sequence[Scene]) -> dict[str, Any]:
    captions = encoder.encode_text([scene.caption for scene in scenes])
    video, audio = embeddings["video"], embeddings["audio"]
    joint = np.stack([combine_query_parts([(v, 1.0), (a, 1.0)]) for v, a in zip(video, audio, strict=True)])
    alone = retrieval_metrics(cosine_similarity(video, captions))
    together = retrieval_metrics(cosine_similarity(joint, captions))
    return {"video": alone.to_dict(), "video+audio": together.to_dict(),
            "gain_R@1": together.recall[1] - alone.recall[1]}


def evaluate_embeddings(encoders: Mapping[str, Encoder], embeddings: Mapping[str, torch.Tensor],
                        scenes: Sequence[Scene], spec: WorldSpec,
                        classifiers: ClassifierCache | None = None) -> dict[str, Any]:
    """Every metric of one split from precomputed embeddings."""
    zero_shot = _zero_shot(encoders, embeddings, scenes, spec, classifiers or ClassifierCache())
    results: dict[str, Any] = {"scenes": len(scenes), "zero_shot": zero_shot}
    for modality, encoder in encoders.items():
        measure = _text_retrieval if modality in ("video", "image") else _text_agreement
        results[f"text_to_{modality}"] = measure(encoder, modality, embeddings[modality], scenes)
    results["emergent"] = _emergent(embeddings, scenes)
    if "video" in encoders and "audio" in encoders:
        results["joint"] = _joint(encoders["video"], embeddings, scenes)
    return results


def evaluate_toyworld(
    encoders: Mapping[str, Encoder],
    seed: int,
    spec: WorldSpec | None = None,
    test_scenes: int | None = None,
    heldout_scenes: int | None = None,
    from_files: bool = False,
) -> dict[str, Any]:
    """Evaluate a model set on a fresh toy world (see the module docstring); returns a JSON-ready dict."""
    if not encoders:
        raise ConfigError("evaluate_toyworld needs at least one encoder")
    world = World(seed, spec)
    results: dict[str, Any] = {"seed": seed, "source": "files" if from_files else "arrays"}
    classifiers = ClassifierCache()
    for split, count in (("test", test_scenes), ("heldout", heldout_scenes)):
        scenes = split_scenes(world, split, count)
        if from_files:
            with tempfile.TemporaryDirectory(prefix=f"lbsearch-eval-{split}-") as folder:
                embeddings = embed_files(encoders, scenes, folder)
        else:
            embeddings = embed_arrays(encoders, scenes, world)
        results[split] = evaluate_embeddings(encoders, embeddings, scenes, world.spec, classifiers)
    results["bars"] = check_bars(results["test"])
    return results


def _lookup(results: Mapping[str, Any], path: Sequence[str]) -> float | None:
    node: Any = results
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node)


def check_bars(split_results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each bar of the issue with its measured value and whether it passes (None where not measured)."""
    bars: dict[str, dict[str, Any]] = {}
    for name, (path, threshold) in BARS.items():
        value = _lookup(split_results, path)
        bars[name] = {"value": value, "bar": threshold, "passed": None if value is None else value >= threshold}
    joint = split_results.get("joint")
    if joint is not None:
        gain = joint["gain_R@1"]
        bars["joint video+audio->text >= video alone"] = {"value": gain, "bar": 0.0, "passed": gain >= 0.0}
    return bars
