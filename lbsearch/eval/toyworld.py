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
(``from_files=True``: MP4/WAV/PNG decoded by the same preprocessors ingestion uses). `ToyWorldEvaluation` keeps
one world's splits to measure several model sets on (the ablations): each modality is rendered once, each
encoder embeds once, and the language tower embeds the captions once per split.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
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
    "joint video+audio->text >= video alone": (("joint", "gain_R@1"), 0.0),
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


def _render_for(modality: str, encoder: Encoder) -> tuple[RenderConfig, tuple[int, int] | None]:
    """What a modality is rendered at for ``encoder``: its input size (and frames, for video), and for audio the
    mel x time grid the log-mel banks are stored at."""
    vision = encoder.config.vision
    if modality == "audio":
        return RenderConfig(), (vision.num_mel_bins, vision.target_length)
    frames = vision.num_frames if modality == "video" else RenderConfig().num_frames
    return RenderConfig(size=vision.image_size[0], num_frames=frames), None


class RenderedSplit:
    """The first scenes of one split, each modality rendered once per render setting and shared by every encoder
    of that modality that embeds them."""

    def __init__(self, world: World, scenes: Sequence[Scene]):
        if not scenes:
            raise ConfigError("a rendered split needs at least one scene")
        first = world.scenes(scenes[0].split, len(scenes))
        if [s.id for s in first] != [s.id for s in scenes]:
            raise ConfigError("embed_arrays needs the first scenes of a split, in order")
        self.world = world
        self.scenes = list(scenes)
        self._rendered: dict[tuple[str, RenderConfig, tuple[int, int] | None], ToyDataset] = {}

    def data(self, modality: str, encoder: Encoder) -> ToyDataset:
        """The scenes' ``modality`` as ``encoder`` reads it, rendered on first use."""
        render, grid = _render_for(modality, encoder)
        key = (modality, render, grid)
        if key not in self._rendered:
            self._rendered[key] = ToyDataset.build(self.world, self.scenes[0].split, {modality: len(self.scenes)},
                                                   render, grid or (1, 1))
        return self._rendered[key]

    def embed(self, modality: str, encoder: Encoder, batch_size: int = 64) -> torch.Tensor:
        data = self.data(modality, encoder)
        count = len(self.scenes)
        return torch.cat([encoder.encode(data.inputs(modality, range(start, min(start + batch_size, count)),
                                                     encoder.config.vision))
                          for start in range(0, count, batch_size)])


def embed_arrays(encoders: Mapping[str, Encoder], scenes: Sequence[Scene], world: World,
                 batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Embed in-memory renders of the scenes with every encoder."""
    render_config_for(encoders)  # one input size for the whole set
    split = RenderedSplit(world, scenes)
    return {modality: split.embed(modality, encoder, batch_size) for modality, encoder in encoders.items()}


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


class TextCache:
    """What the language tower computes for an evaluation, computed once per tower: zero-shot classifiers (per
    template set and class list) and caption embeddings.

    One language tower serves every checkpoint of a set, both splits ask for the same classes, and every
    modality's retrieval reads the same captions. Entries hold their tower, so its id is never reused.
    """

    def __init__(self) -> None:
        self._built: dict[tuple, tuple[Any, torch.Tensor]] = {}

    def _get(self, encoder: Encoder, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (id(encoder.text), *key)
        if key not in self._built:
            self._built[key] = (encoder.text, compute())
        return self._built[key][1]

    def classifier(self, encoder: Encoder, modality: str, names: Sequence[str]) -> torch.Tensor:
        templates = templates_for(modality)
        return self._get(encoder, ("classifier", templates, tuple(names)),
                         lambda: build_classifier(names, modality, encoder.encode_text))

    def captions(self, encoder: Encoder, scenes: Sequence[Scene]) -> torch.Tensor:
        """Every caption of every scene, in scene order, embedded."""
        texts = tuple(caption for scene in scenes for caption in scene.captions)
        return self._get(encoder, ("captions", texts), lambda: encoder.encode_text(list(texts)))


def _zero_shot(encoders: Mapping[str, Encoder], embeddings: Mapping[str, torch.Tensor], scenes: Sequence[Scene],
               spec: WorldSpec, text: TextCache) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for modality, encoder in encoders.items():
        results[modality] = {}
        for task in ZERO_SHOT_TASKS[modality]:
            # "sound" classifies the shape by naming its sound ("a sound of low hum.").
            attribute = "shape" if task == "sound" else task
            options = list(spec.values[attribute])
            names = [class_name(task, SOUNDS[v] if task == "sound" else v) for v in options]
            labels = [options.index(s.attributes[attribute]) for s in scenes]
            classifier = text.classifier(encoder, modality, names)
            results[modality][task] = accuracy(embeddings[modality], classifier, labels, ks=(1,))[1]
    return results


def _text_retrieval(modality: str, items: torch.Tensor, captions: torch.Tensor,
                    scenes: Sequence[Scene]) -> dict[str, Any]:
    owners = np.repeat(np.arange(len(scenes)), [len(s.captions) for s in scenes])
    both = multi_caption_retrieval_metrics(cosine_similarity(captions, items), owners)
    return {**both.text_to_item.to_dict(), "item_to_text": both.item_to_text.to_dict()}


def _text_agreement(modality: str, items: torch.Tensor, captions: torch.Tensor,
                    scenes: Sequence[Scene]) -> dict[str, Any]:
    """Caption -> item where the item carries only some attributes: a hit agrees on those."""
    carried = [a for a in VISIBLE_ATTRIBUTES if a in CARRIED_BY[modality]]
    labels = [tuple(s.attributes[a] for a in carried) for s in scenes]
    caption_labels = [label for label, scene in zip(labels, scenes, strict=True) for _ in scene.captions]
    sim = cosine_similarity(captions, items)
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


def _joint(embeddings: Mapping[str, torch.Tensor], captions: torch.Tensor, scenes: Sequence[Scene]) -> dict[str, Any]:
    """Each scene's first caption -> video alone and video+audio."""
    first = np.cumsum([0, *(len(s.captions) for s in scenes[:-1])])
    captions = captions[torch.as_tensor(first)]
    video, audio = embeddings["video"], embeddings["audio"]
    joint = np.stack([combine_query_parts([(v, 1.0), (a, 1.0)]) for v, a in zip(video, audio, strict=True)])
    alone = retrieval_metrics(cosine_similarity(video, captions))
    together = retrieval_metrics(cosine_similarity(joint, captions))
    return {"video": alone.to_dict(), "video+audio": together.to_dict(),
            "gain_R@1": together.recall[1] - alone.recall[1]}


def evaluate_embeddings(encoders: Mapping[str, Encoder], embeddings: Mapping[str, torch.Tensor],
                        scenes: Sequence[Scene], spec: WorldSpec, text: TextCache | None = None) -> dict[str, Any]:
    """Every metric of one split from precomputed embeddings."""
    text = text or TextCache()
    zero_shot = _zero_shot(encoders, embeddings, scenes, spec, text)
    results: dict[str, Any] = {"scenes": len(scenes), "zero_shot": zero_shot}
    for modality, encoder in encoders.items():
        measure = _text_retrieval if modality in ("video", "image") else _text_agreement
        captions = text.captions(encoder, scenes)
        results[f"text_to_{modality}"] = measure(modality, embeddings[modality], captions, scenes)
    results["emergent"] = _emergent(embeddings, scenes)
    if "video" in encoders and "audio" in encoders:
        results["joint"] = _joint(embeddings, text.captions(encoders["video"], scenes), scenes)
    return results


class ToyWorldEvaluation:
    """A fresh toy world's test and held-out splits, rendered once and embedded once per encoder.

    Several model sets measured on one evaluation (a checkpoint set, then each ablation of one modality) share
    the renders, the embeddings of the encoders they have in common, and the language tower's work.
    """

    SPLITS = ("test", "heldout")

    def __init__(self, seed: int, spec: WorldSpec | None = None, test_scenes: int | None = None,
                 heldout_scenes: int | None = None):
        self.seed = seed
        self.world = World(seed, spec)
        counts = dict(zip(self.SPLITS, (test_scenes, heldout_scenes), strict=True))
        self.splits = {split: RenderedSplit(self.world, split_scenes(self.world, split, counts[split]))
                       for split in self.SPLITS}
        self.text = TextCache()
        # (split, modality, id(encoder)) -> (the encoder, kept so its id stays its own; its embeddings)
        self._embedded: dict[tuple[str, str, int], tuple[Encoder, torch.Tensor]] = {}

    def embeddings(self, split: str, encoders: Mapping[str, Encoder]) -> dict[str, torch.Tensor]:
        """Each encoder's embeddings of the split's scenes, from in-memory renders."""
        render_config_for(encoders)  # one input size for the whole set
        out = {}
        for modality, encoder in encoders.items():
            key = (split, modality, id(encoder))
            if key not in self._embedded:
                self._embedded[key] = (encoder, self.splits[split].embed(modality, encoder))
            out[modality] = self._embedded[key][1]
        return out

    def evaluate(self, encoders: Mapping[str, Encoder], from_files: bool = False) -> dict[str, Any]:
        """Every metric of both splits and the bars (see the module docstring); JSON-ready."""
        if not encoders:
            raise ConfigError("evaluate_toyworld needs at least one encoder")
        results: dict[str, Any] = {"seed": self.seed, "source": "files" if from_files else "arrays"}
        for split, rendered in self.splits.items():
            if from_files:
                with tempfile.TemporaryDirectory(prefix=f"lbsearch-eval-{split}-") as folder:
                    embeddings = embed_files(encoders, rendered.scenes, folder)
            else:
                embeddings = self.embeddings(split, encoders)
            results[split] = evaluate_embeddings(encoders, embeddings, rendered.scenes, self.world.spec, self.text)
        results["bars"] = check_bars(results["test"])
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
    return ToyWorldEvaluation(seed, spec, test_scenes, heldout_scenes).evaluate(encoders, from_files)


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
    return bars
