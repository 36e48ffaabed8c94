"""Evaluation: the toy-world metrics (checked with an oracle and a broken model), the bars, both embedding paths,
and the benchmark adapters on small look-alike folders."""

from __future__ import annotations

import csv
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lbsearch.errors import ConfigError, DatasetError
from lbsearch.eval.benchmarks import (
    class_folders,
    clotho,
    esc50,
    evaluate_benchmark,
    load_benchmark,
    msrvtt_1ka,
    msvd,
)
from lbsearch.eval.toyworld import (
    ZERO_SHOT_TASKS,
    ToyWorldEvaluation,
    check_bars,
    embed_arrays,
    embed_files,
    evaluate_embeddings,
    evaluate_toyworld,
    split_scenes,
)
from lbsearch.models import Encoder, build_encoder
from lbsearch.toyworld import CARRIED_BY, SOUNDS, LibraryLayout, World, WorldSpec, write_scene
from lbsearch.train import ToyDataset, modality_config, preset

CONFIG = preset("test")
RENDER = CONFIG.data.render
SPEC = WorldSpec()


class BagOfWords:
    """An oracle 'language tower': one dimension per attribute value word, counted in the text."""

    def __init__(self, spec: WorldSpec):
        self.text = self  # the language tower (zero-shot classifiers are cached per tower)
        sounds = [SOUNDS[s].removeprefix("a ") for s in spec.shapes]
        self.words = [v for values in spec.values.values() for v in values] + sounds
        self.patterns = [re.compile(rf"\b{re.escape(w)}\b") for w in self.words]

    def vector(self, present: list[str]) -> torch.Tensor:
        return F.normalize(torch.tensor([float(w in present) for w in self.words]) + 1e-3, dim=0)

    def encode_text(self, texts, batch_size=None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        rows = [[w for w, p in zip(self.words, self.patterns, strict=True) if p.search(t)] for t in texts]
        return torch.stack([self.vector(row) for row in rows])

    def media(self, scene, modality: str) -> torch.Tensor:
        present = [scene.attributes[a] for a in CARRIED_BY[modality] if a != "sound"]
        if "sound" in CARRIED_BY[modality]:
            present.append(scene.attributes["sound"].removeprefix("a "))
        return self.vector(present)


@pytest.fixture(scope="module")
def oracle():
    scenes = World(3).scenes("test", len(SPEC.seen_combinations()))
    bag = BagOfWords(SPEC)
    embeddings = {m: torch.stack([bag.media(s, m) for s in scenes]) for m in CARRIED_BY}
    return bag, scenes, embeddings


def test_an_oracle_passes_every_bar_and_a_shuffled_one_fails(oracle):
    bag, scenes, embeddings = oracle
    encoders = dict.fromkeys(CARRIED_BY, bag)
    results = evaluate_embeddings(encoders, embeddings, scenes, SPEC)
    for modality, tasks in ZERO_SHOT_TASKS.items():
        assert set(results["zero_shot"][modality]) == set(tasks)
        assert all(v == 1.0 for v in results["zero_shot"][modality].values()), (modality, results["zero_shot"])
    assert results["text_to_video"]["R@1"] == 1.0 and results["text_to_video"]["n"] == 4 * len(scenes)
    assert results["text_to_video"]["item_to_text"]["R@1"] == 1.0
    # Audio, depth and thermal carry only some attributes: a hit agrees with the caption on those.
    assert results["text_to_audio"]["agree_on"] == ["shape"] and results["text_to_audio"]["R@1"] == 1.0
    assert results["text_to_depth"]["agree_on"] == ["shape", "distance"] and results["text_to_depth"]["R@1"] == 1.0
    assert results["emergent"]["audio->video"]["agree_on"] == ["shape"]
    assert results["emergent"]["thermal->image"]["agree_on"] == ["shape", "distance", "temperature"]
    assert all(r["R@1"] == 1.0 for r in results["emergent"].values())
    assert results["joint"]["gain_R@1"] == 0.0
    bars = check_bars(results)
    assert all(b["passed"] for b in bars.values()), bars

    generator = torch.Generator().manual_seed(0)
    shuffled = {m: e[torch.randperm(len(e), generator=generator)] for m, e in embeddings.items()}
    broken = evaluate_embeddings(encoders, shuffled, scenes, SPEC)
    assert broken["zero_shot"]["image"]["shape"] < 0.5
    assert broken["text_to_video"]["R@1"] < 0.05 and broken["text_to_video"]["MdR"] > 20
    assert broken["emergent"]["audio->video"]["R@1"] < 0.5
    assert broken["text_to_audio"]["R@1"] < 0.5
    failed = [name for name, bar in check_bars(broken).items() if bar["passed"] is False]
    assert "text->video R@1" in failed and "zero-shot shape from audio" in failed


def test_joint_query_helps_when_the_video_misses_the_shape(oracle):
    bag, scenes, embeddings = oracle
    # A video tower blind to shape: audio supplies it, so video+audio must beat video alone.
    blind = torch.stack([bag.vector([s.attributes[a] for a in CARRIED_BY["video"] if a != "shape"]) for s in scenes])
    results = evaluate_embeddings({"video": bag, "audio": bag}, {**embeddings, "video": blind}, scenes, SPEC)
    assert results["joint"]["gain_R@1"] > 0.3
    assert results["joint"]["video+audio"]["R@1"] == 1.0
    assert check_bars(results)["joint video+audio->text >= video alone"]["passed"]


def test_captions_are_embedded_once_for_every_modality(oracle, monkeypatch):
    bag, scenes, embeddings = oracle
    asked: list[list[str]] = []
    encode = bag.encode_text
    monkeypatch.setattr(bag, "encode_text", lambda texts, batch_size=None: asked.append(list(texts)) or encode(texts))
    results = evaluate_embeddings(dict.fromkeys(CARRIED_BY, bag), embeddings, scenes, SPEC)
    captions = [caption for scene in scenes for caption in scene.captions]
    assert asked.count(captions) == 1
    # The joint query's captions (each scene's first) come from the same embeddings.
    assert not any(set(texts) < set(captions) for texts in asked)
    assert results["joint"]["video+audio"]["R@1"] == 1.0 and results["text_to_thermal"]["R@1"] == 1.0


def _random_model_set() -> dict[str, Encoder]:
    torch.manual_seed(0)
    image = build_encoder(CONFIG.towers.image_config(RENDER.size))
    encoders = {"image": image}
    for modality in ("video", "audio", "depth", "thermal"):
        config = modality_config(image.config, modality, num_frames=RENDER.num_frames,
                                 audio_grid=(CONFIG.towers.audio_mel_bins, CONFIG.towers.audio_target_length),
                                 audio_stats=(-8.0, 4.0))
        encoders[modality] = build_encoder(config)
        encoders[modality].text = image.text
    return encoders


def test_files_and_arrays_embed_alike(tmp_path):
    encoders = _random_model_set()
    world = World(4)
    scenes = world.scenes("test", 6)
    arrays = embed_arrays(encoders, scenes, world)
    files = embed_files(encoders, scenes, tmp_path)
    # PNG and WAV are lossless (the training store keeps log-mel banks in fp16); MP4 is H.264.
    for modality, tolerance in {"image": 1e-5, "depth": 1e-5, "thermal": 1e-5, "audio": 1e-2, "video": 0.1}.items():
        assert float((arrays[modality] - files[modality]).abs().max()) < tolerance, modality
    assert (tmp_path / "videos" / f"{scenes[0].id}.mp4").is_file()


def test_evaluate_toyworld_reports_both_splits_and_the_bars():
    results = evaluate_toyworld(_random_model_set(), seed=4, test_scenes=12, heldout_scenes=6)
    assert results["seed"] == 4 and results["source"] == "arrays"
    assert results["test"]["scenes"] == 12 and results["heldout"]["scenes"] == 6
    assert results["heldout"]["text_to_video"]["n"] == 4 * 6
    assert set(results["bars"]) >= {"text->video R@1", "audio->video top hit has the shape",
                                     "joint video+audio->text >= video alone"}
    # Random towers know nothing: the retrieval bar must fail.
    assert results["bars"]["text->video R@1"]["passed"] is False


def test_a_second_model_set_reuses_the_rendered_and_embedded_splits(monkeypatch):
    encoders = _random_model_set()
    evaluation = ToyWorldEvaluation(seed=4, test_scenes=6, heldout_scenes=3)
    evaluation.evaluate(encoders)
    torch.manual_seed(1)
    thermal = build_encoder(encoders["thermal"].config)
    thermal.text = encoders["image"].text
    ablation = {"image": encoders["image"], "thermal": thermal}  # an ablation row: same image tower, new thermal

    builds, image_batches = [], []
    build = ToyDataset.build
    monkeypatch.setattr(ToyDataset, "build", lambda *a, **k: builds.append(a) or build(*a, **k))
    encode = encoders["image"].encode
    monkeypatch.setattr(encoders["image"], "encode", lambda x, **k: image_batches.append(x) or encode(x, **k))
    results = evaluation.evaluate(ablation)
    assert builds == [] and image_batches == []
    monkeypatch.undo()
    assert results == evaluate_toyworld(ablation, seed=4, test_scenes=6, heldout_scenes=3)
    assert results["test"]["zero_shot"]["image"] == evaluation.evaluate(encoders)["test"]["zero_shot"]["image"]


# ---------------------------------------------------------------------------------------------- benchmarks


@pytest.fixture(scope="module")
def benchmark_media(tmp_path_factory):
    """A few real files per modality, written by the toy world."""
    root = tmp_path_factory.mktemp("media")
    scenes = World(9).scenes("test", 3)
    files = [write_scene(s, root, RENDER, LibraryLayout(mux_audio=False)) for s in scenes]
    return {m: [f[m] for f in files] for m in files[0]}


def _caption_top_hit_rate(encoder: Encoder, dataset) -> float:
    """Text->item R@1 computed here, one file at a time: how often a caption's nearest item is its own."""
    items = F.normalize(torch.cat([encoder.encode(encoder.preprocess(p)[None]) for p in dataset.files]), dim=-1)
    texts = F.normalize(encoder.encode_text(dataset.captions), dim=-1)
    return float(((texts @ items.T).argmax(1) == torch.tensor(dataset.caption_items)).float().mean())


def test_msrvtt_and_msvd_layouts(benchmark_media, tmp_path):
    (tmp_path / "msrvtt" / "videos" / "all").mkdir(parents=True)
    with (tmp_path / "msrvtt" / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        for i, path in enumerate(benchmark_media["video"]):
            shutil.copy(path, tmp_path / "msrvtt" / "videos" / "all" / f"video{i}.mp4")
            writer.writerow([f"ret{i}", f"msr{i}", f"video{i}", f"caption number {i}"])
    dataset = msrvtt_1ka(tmp_path / "msrvtt")
    assert [p.name for p in dataset.files] == ["video0.mp4", "video1.mp4", "video2.mp4"]
    assert dataset.captions[2] == "caption number 2" and dataset.caption_items == [0, 1, 2]
    encoder = _random_model_set()["video"]
    result = evaluate_benchmark(encoder, dataset)
    assert result["n"] == 3 and result["text_to_item"]["n"] == 3
    assert result["text_to_item"]["R@1"] == pytest.approx(_caption_top_hit_rate(encoder, dataset))

    folder = tmp_path / "msvd"
    (folder / "YouTubeClips").mkdir(parents=True)
    for i, path in enumerate(benchmark_media["video"][:2]):
        shutil.copy(path, folder / "YouTubeClips" / f"clip{i}.mp4")
    (folder / "test_list.txt").write_text("clip0\nclip1\n")
    captions = {"clip0": [["a", "dog"], ["a", "cat"]], "clip1": [["x"], ["y"], ["z"]], "other": [["q"]]}
    (folder / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    dataset = msvd(folder)
    assert dataset.captions == ["a dog", "a cat", "x", "y", "z"] and dataset.caption_items == [0, 0, 1, 1, 1]
    result = evaluate_benchmark(encoder, dataset)
    assert result["text_to_item"]["n"] == 5 and result["item_to_text"]["n"] == 2
    assert result["text_to_item"]["R@1"] == pytest.approx(_caption_top_hit_rate(encoder, dataset))
    # A pickle that would import code is refused.
    (folder / "raw-captions.pkl").write_bytes(pickle.dumps({"clip0": np.zeros(2)}))
    with pytest.raises(DatasetError, match=r"raw-captions\.pkl"):
        msvd(folder)


def test_audio_layouts(benchmark_media, tmp_path):
    folder = tmp_path / "esc50"
    (folder / "meta").mkdir(parents=True)
    (folder / "audio").mkdir()
    rows = [("1-1-A-5.wav", 1, 5, "dog"), ("2-1-A-0.wav", 2, 0, "church_bells"), ("1-2-A-5.wav", 1, 5, "dog")]
    with (folder / "meta" / "esc50.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for (name, fold, target, category), path in zip(rows, benchmark_media["audio"], strict=True):
            shutil.copy(path, folder / "audio" / name)
            writer.writerow([name, fold, target, category, "False", "x", "A"])
    dataset = esc50(folder)
    assert dataset.class_names == ["church bells", "dog"] and dataset.labels == [1, 0, 1]
    assert esc50(folder, folds=[1]).labels == [0, 0]
    encoder = _random_model_set()["audio"]
    result = evaluate_benchmark(encoder, dataset)
    assert result["n"] == 3 and set(result) == {"benchmark", "n", "top1"}  # no top-5 with two classes

    folder = tmp_path / "clotho"
    (folder / "evaluation").mkdir(parents=True)
    with (folder / "clotho_captions_evaluation.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", *(f"caption_{i}" for i in range(1, 6))])
        for i, path in enumerate(benchmark_media["audio"][:2]):
            shutil.copy(path, folder / "evaluation" / f"sound {i}.wav")
            writer.writerow([f"sound {i}.wav", *(f"sound {i} caption {c}" for c in range(5))])
    dataset = clotho(folder)
    assert len(dataset.captions) == 10 and dataset.caption_items[5:] == [1] * 5
    result = evaluate_benchmark(encoder, dataset)
    assert result["text_to_item"]["n"] == 10
    assert result["text_to_item"]["R@1"] == pytest.approx(_caption_top_hit_rate(encoder, dataset))


def test_class_folder_layouts_and_errors(benchmark_media, tmp_path):
    for name, modality in (("nyud", "depth"), ("llvip", "thermal")):
        folder = tmp_path / name
        classes = ("dining_room", "office") if name == "nyud" else ("background", "people")
        for index, path in enumerate(benchmark_media[modality]):
            target = folder / classes[index % 2]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
        (folder / classes[0] / "notes.txt").write_text("not media")
        dataset = load_benchmark(name, folder)
        assert dataset.modality == modality and len(dataset.files) == 3 and dataset.labels == [0, 0, 1]
        assert dataset.class_names == [c.replace("_", " ") for c in classes]
        result = evaluate_benchmark(_random_model_set()[modality], dataset)
        assert result["n"] == 3 and 0.0 <= result["top1"] <= 1.0
    with pytest.raises(DatasetError, match=r"MSRVTT_JSFUSION_test\.csv"):
        msrvtt_1ka(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="one folder per class"):
        class_folders(tmp_path / "nyud" / "office", "depth", "nyud")
    with pytest.raises(DatasetError, match="unknown benchmark"):
        load_benchmark("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="is a depth benchmark"):
        evaluate_benchmark(_random_model_set()["audio"], load_benchmark("nyud", tmp_path / "nyud"))


def test_a_split_gives_at_most_one_scene_per_combination():
    # Beyond that, scenes repeat captions and a caption would have several right answers.
    world = World(0)
    combinations = len(world.spec.split_combinations("heldout"))
    scenes = split_scenes(world, "heldout", combinations)
    assert len({s.combination for s in scenes}) == combinations
    with pytest.raises(ConfigError, match=f"{combinations} attribute combinations"):
        split_scenes(world, "heldout", combinations + 1)
