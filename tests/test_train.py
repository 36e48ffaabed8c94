"""The LanguageBind training method: loss, masking, initialisation from the image tower, LoRA, data paths, and a
CI-sized run of both stages that must bind far better than the untrained encoders."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from lbsearch.errors import ConfigError, LbsearchError, MediaError
from lbsearch.eval.toyworld import evaluate_embeddings
from lbsearch.models import Encoder, build_encoder, load_checkpoint, preprocessor_for, save_checkpoint
from lbsearch.toyworld import LibraryLayout, World, write_scene
from lbsearch.train import (
    CaptionedFiles,
    CaptionSampler,
    PatchMasking,
    Schedule,
    ToyDataset,
    bind_files,
    bind_toy,
    class_name,
    contrastive_loss,
    describe,
    encoder_from_open_clip,
    modality_config,
    preset,
    start_tower,
    train_stage1,
)
from lbsearch.train.data import MENTIONABLE, matching_pairs
from lbsearch.train.stage2 import _trainable

CONFIG = preset("test")
RENDER = CONFIG.data.render
GRID = (CONFIG.towers.audio_mel_bins, CONFIG.towers.audio_target_length)
MODALITIES = ("image", "video", "audio", "depth", "thermal")


def _image_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return build_encoder(CONFIG.towers.image_config(RENDER.size))


# ---------------------------------------------------------------------------------------------- loss


def test_contrastive_loss_rewards_alignment_and_counts_repeats_as_positives():
    torch.manual_seed(0)
    media = torch.randn(8, 16)
    scale = torch.tensor(math.log(1 / 0.07))
    aligned = contrastive_loss(media, media + 0.01 * torch.randn(8, 16), scale)
    shuffled = contrastive_loss(media, media[torch.randperm(8)], scale)
    assert aligned < 0.1 < shuffled
    # Symmetric: swapping the roles of media and text gives the same loss.
    text = torch.randn(8, 16)
    assert torch.allclose(contrastive_loss(media, text, scale), contrastive_loss(text, media, scale))
    # The identity mask is the plain loss.
    assert torch.allclose(contrastive_loss(media, text, scale, torch.eye(8, dtype=torch.bool)),
                          contrastive_loss(media, text, scale))
    # Items 0 and 1 share a description. Counted as negatives (the plain loss), splitting them apart pays off;
    # counted as positives (the mask), it costs: the pair should coincide.
    together = media.clone()
    together[1] = together[0]
    apart = together.clone()
    apart[1] = apart[0] + 0.5 * torch.randn(16)
    repeats = matching_pairs(torch.tensor([[0], [0], *[[i] for i in range(2, 8)]]))
    assert contrastive_loss(apart, apart, scale) < contrastive_loss(together, together, scale)
    assert contrastive_loss(apart, apart, scale, repeats) > contrastive_loss(together, together, scale, repeats)
    with pytest.raises(LbsearchError, match="positive in every row"):
        contrastive_loss(media, text, scale, torch.zeros(8, 8, dtype=torch.bool))


def test_partial_descriptions_pin_what_they_name():
    assert [class_name("shape", "circle"), class_name("colour", "red"), class_name("direction", "left"),
            class_name("distance", "near"), class_name("temperature", "hot"), class_name("sound", "a low hum")] == [
        "circle", "red thing", "thing moving left", "near thing", "hot thing", "low hum"]
    assert describe({"shape": "star", "colour": "blue", "sound": "a whistle"}) == "blue star with a whistle"
    scene = World(0).scene("train", 3)
    sampler = CaptionSampler(full_caption_fraction=0.0, template_fraction=1.0, mention_weights=(0.5, 0.5))
    rng = random.Random(0)
    for _ in range(50):
        text, pinned = sampler.sample(scene, rng)
        assert 1 <= len(pinned) <= 2 and text.count(".") >= 1
        # Exactly the attributes the text names are pinned (naming the sound pins the shape that makes it).
        named = {
            "shape" if name == "sound" else name
            for name in MENTIONABLE
            if re.search(rf"\b{re.escape(scene.attributes[name].removeprefix('a '))}\b", text)
        }
        assert set(pinned) == named, (text, pinned)
    text, pinned = CaptionSampler(full_caption_fraction=1.0).sample(scene, rng)
    assert text in scene.captions and len(pinned) == 5


# ---------------------------------------------------------------------------------------------- stage 2 pieces


def test_patch_masking_keeps_cls_and_shares_positions_across_frames():
    config = modality_config(_image_encoder().config, "video", num_frames=RENDER.num_frames)
    tower = start_tower(_image_encoder(), config, "lora")
    embeddings = tower.vision_model.embeddings
    frames = torch.randn(2 * RENDER.num_frames, 3, RENDER.size, RENDER.size)
    full = embeddings(frames, RENDER.num_frames)
    handle = PatchMasking(0.5).attach(tower)
    embeddings.train()
    kept = embeddings(frames, RENDER.num_frames)
    patches = full.shape[1] - 1
    assert kept.shape == (full.shape[0], 1 + round(patches * 0.5), full.shape[2])
    assert torch.equal(kept[:, 0], full[:, 0])  # CLS always first and untouched
    # Each kept token is one of its frame's tokens (position embedding included), at the same position in
    # every frame of a clip, and the two clips draw different positions.
    positions = [[int(((full[f, 1:] - token).abs().sum(-1) == 0).nonzero()) for token in kept[f, 1:]]
                 for f in range(full.shape[0])]
    assert all(p == positions[0] for p in positions[: RENDER.num_frames])
    assert all(p == positions[RENDER.num_frames] for p in positions[RENDER.num_frames :])
    assert positions[0] != positions[RENDER.num_frames]
    embeddings.eval()
    assert torch.equal(embeddings(frames, RENDER.num_frames), full)  # no masking at inference
    handle.remove()


def test_new_modalities_start_from_the_image_tower():
    image = _image_encoder()
    pixels = torch.randn(3, 3, RENDER.size, RENDER.size)
    for modality in ("depth", "thermal"):
        tower = start_tower(image, modality_config(image.config, modality), "lora").eval()
        assert torch.allclose(tower(pixels), image.vision(pixels), atol=1e-6)
    video = start_tower(image, modality_config(image.config, "video", num_frames=4), "lora")
    layer = video.vision_model.encoder.layers[1]
    assert torch.equal(layer.temporal_attn.q_proj.weight, layer.self_attn.q_proj.weight)
    assert torch.equal(layer.temporal_layer_norm1.bias, layer.layer_norm1.bias)
    assert 0 < layer.temporal_embedding.std() < 0.05
    audio_config = modality_config(image.config, "audio", audio_grid=(32, 96), audio_stats=(-3.0, 2.0))
    audio = start_tower(image, audio_config, "lora")
    table, source = audio.vision_model.embeddings.position_embedding.weight, image.vision.vision_model.embeddings
    assert table.shape[0] == 1 + (32 // CONFIG.towers.patch_size) * (96 // CONFIG.towers.patch_size)
    assert torch.equal(table[0], source.position_embedding.weight[0])  # CLS position kept
    # A grid the same size as the image's reproduces the table.
    same = modality_config(image.config, "audio", audio_grid=(RENDER.size, RENDER.size))
    assert torch.equal(start_tower(image, same, "lora").vision_model.embeddings.position_embedding.weight,
                       source.position_embedding.weight)
    assert audio_config.vision.audio_mean == -3.0 and audio_config.vision.audio_std == 2.0
    other = _image_encoder(seed=3)
    scratch = start_tower(other, modality_config(other.config, "depth"), "scratch", seed=0)
    assert not torch.equal(scratch.visual_projection.weight, other.vision.visual_projection.weight)


def test_lora_trains_attention_only_and_merges_exactly():
    image = _image_encoder()
    stage = replace(CONFIG.stage2["depth"], also_train=())
    tower = start_tower(image, modality_config(image.config, "depth"), "lora")
    model = _trainable(tower, stage)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and "self_attn" in n for n in trainable)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)  # a trained-looking adapter (B starts at zero)
    model.eval()
    pixels = torch.randn(2, 3, RENDER.size, RENDER.size)
    with torch.no_grad():
        adapted = model(pixels)
        merged = model.merge_and_unload()(pixels)
    assert torch.allclose(adapted, merged, atol=1e-5)
    assert not torch.allclose(merged, image.vision(pixels), atol=1e-3)


# ---------------------------------------------------------------------------------------------- data paths


def test_training_inputs_equal_what_the_files_give(tmp_path):
    image = _image_encoder()
    scenes = World(5).scenes("train", 3)
    data = ToyDataset.build(World(5), "train", dict.fromkeys(MODALITIES, 3), RENDER, GRID)
    for scene in scenes:
        write_scene(scene, tmp_path, RENDER, LibraryLayout(mux_audio=False))
    for modality in MODALITIES:
        config = modality_config(image.config, modality, num_frames=RENDER.num_frames, audio_grid=GRID,
                                 audio_stats=data.audio_stats()).vision
        from_arrays = data.inputs(modality, range(3), config)
        suffix = {"video": "videos/{}.mp4", "audio": "sounds/{}.wav", "image": "scenes/rgb/{}.png",
                  "depth": "scenes/depth/{}.png", "thermal": "scenes/thermal/{}.png"}[modality]
        from_files = torch.stack([preprocessor_for(modality, config)(tmp_path / suffix.format(s.id)) for s in scenes])
        assert from_arrays.shape == from_files.shape, modality
        # PNG and WAV hold the arrays exactly (audio is stored as fp16); H.264 loses a little.
        # (0.06 for video: frames off by one or reversed differ by 0.14 or more.)
        tolerance = {"video": 0.06, "audio": 2e-3}.get(modality, 1e-5)
        difference = (from_arrays - from_files).abs()
        assert float(difference.mean()) < tolerance, (modality, float(difference.mean()))


def test_toy_inputs_are_preprocessed_once_and_equal_batch_by_batch(monkeypatch):
    from lbsearch.train import data as data_module

    image = _image_encoder()
    data = ToyDataset.build(World(5), "train", dict.fromkeys(MODALITIES, 6), RENDER, GRID)
    configs = {m: modality_config(image.config, m, num_frames=RENDER.num_frames, audio_grid=GRID,
                                  audio_stats=data.audio_stats()).vision for m in MODALITIES}
    first = {m: data.inputs(m, [4, 1, 3], configs[m]) for m in MODALITIES}
    calls = []
    preprocess = data_module.model_inputs
    monkeypatch.setattr(data_module, "model_inputs", lambda *a: calls.append(a[0]) or preprocess(*a))
    for modality in MODALITIES:
        assert torch.equal(data.inputs(modality, [3, 4], configs[modality]), first[modality][[2, 0]]), modality
    assert calls == []  # every step after the first reads the kept inputs
    # Inputs too large to keep are preprocessed batch by batch, to the same values.
    monkeypatch.setattr(data_module, "INPUT_CACHE_BYTES", 0)
    uncached = ToyDataset(data.scenes, data.spec, data.render, data.stored, data.codes)
    for modality in MODALITIES:
        for _ in range(2):
            assert torch.allclose(uncached.inputs(modality, [4, 1, 3], configs[modality]), first[modality],
                                  atol=1e-6), modality
    assert calls.count("video") == 1 + 2  # the size probe, then each request


def test_towers_start_their_embedding_tables_as_clip():
    encoder = _image_encoder()
    text, vision = encoder.text.text_model.embeddings, encoder.vision.vision_model.embeddings
    width = CONFIG.towers.width
    for table, std in ((text.token_embedding.weight, 0.02), (text.position_embedding.weight, 0.01),
                       (vision.position_embedding.weight, width**-0.5)):
        measured = float(table.detach().std())
        assert abs(measured - std) < 0.15 * std, (tuple(table.shape), measured, std)


def test_captioned_files_and_binding_from_a_manifest(tmp_path):
    scenes = World(2).scenes("train", 4)
    lines = []
    for scene in scenes:
        path = write_scene(scene, tmp_path, RENDER, LibraryLayout(modalities=("depth",)))["depth"]
        lines.append(json.dumps({"path": str(path.relative_to(tmp_path)), "caption": scene.caption}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    start = _image_encoder()
    stage = replace(CONFIG.stage2["depth"], schedule=Schedule(steps=2, batch_size=4, lr=1e-3, warmup_steps=1))
    bound = bind_files(start, str(tmp_path / "train.jsonl"), stage, device="cpu", workers=0)
    assert bound.modality == "depth" and bound.vision is not None
    save_checkpoint(bound, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    pixels = loaded.preprocess(tmp_path / f"scenes/depth/{scenes[0].id}.png")[None]
    assert torch.allclose(loaded.encode(pixels), bound.encode(pixels), atol=1e-6)

    (tmp_path / "missing.jsonl").write_text(json.dumps({"path": "nowhere.png", "caption": "x"}) + "\n")
    with pytest.raises(MediaError, match=r"nowhere\.png"):
        CaptionedFiles(tmp_path / "missing.jsonl", "depth", loaded.config.vision).check_files()
    (tmp_path / "bad.jsonl").write_text('{"file": "a.png"}\n')
    with pytest.raises(LbsearchError, match=r"bad.jsonl:1"):
        CaptionedFiles(tmp_path / "bad.jsonl", "depth", loaded.config.vision)

    # Fewer files than one batch: an error, not a loop over empty passes.
    small = replace(stage, schedule=replace(stage.schedule, batch_size=8))
    with pytest.raises(ConfigError, match=r"4 files cannot fill one batch of 8"):
        bind_files(start, str(tmp_path / "train.jsonl"), small, device="cpu", workers=0)
    # A file that cannot be decoded, read by a loader worker process: still a MediaError naming it.
    (tmp_path / f"scenes/depth/{scenes[1].id}.png").write_bytes(b"not a png")
    with pytest.raises(MediaError, match=rf"train\.jsonl: .*{scenes[1].id}\.png"):
        bind_files(start, str(tmp_path / "train.jsonl"), stage, device="cpu", workers=1)


def test_open_clip_weights_map_onto_languagebind_towers():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(16, CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
                 CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)).eval()
    encoder = encoder_from_open_clip(model)
    pixels = torch.randn(2, 3, 32, 32)
    texts = ["a red circle moving left", "a photo of a dog."]
    from lbsearch import tokenize

    with torch.no_grad():
        expected_image = model.encode_image(pixels, normalize=True)
        expected_text = model.encode_text(tokenize(texts), normalize=True)
    assert torch.allclose(encoder.encode(pixels), expected_image, atol=1e-5)
    assert torch.allclose(encoder.encode_text(texts), expected_text, atol=1e-5)
    assert encoder.logit_scale == pytest.approx(float(model.logit_scale.detach()))


@pytest.mark.parametrize(("vision", "text", "extra", "named"), [
    ({"pool_type": "avg"}, {}, {}, "'avg' image pooling"),
    ({"no_ln_pre": True}, {}, {}, "no LayerNorm before the vision transformer"),
    ({"ls_init_value": 1e-4}, {}, {}, "LayerScale in the image blocks"),
    ({}, {"pool_type": "last"}, {}, "'last' text pooling"),
    ({}, {"no_causal_mask": True}, {}, "bidirectional language tower"),
    ({}, {"proj_bias": True}, {}, "text projection that is missing or has a bias"),
    ({}, {"vocab_size": 32000}, {}, "a tokenizer other than CLIP's"),
    ({}, {}, {"init_logit_bias": -10.0}, "a logit bias"),
])
def test_open_clip_variants_the_towers_cannot_reproduce_are_refused(vision, text, extra, named):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    model = CLIP(16, CLIPVisionCfg(**{"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32,
                                      **vision}),
                 CLIPTextCfg(**{"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                                **text}), **extra)
    with pytest.raises(ConfigError, match=rf"^variant: this OpenCLIP model does not map .*{re.escape(named)}"):
        encoder_from_open_clip(model, source="variant")


# ---------------------------------------------------------------------------------------------- the CI-sized run


@pytest.fixture(scope="module")
def trained():
    """Both stages of the "test" preset on a small world, with the untrained starting towers for comparison."""
    # Towers this small gain nothing from a second thread, and on a busy runner thread hand-offs stall them.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    world = World(CONFIG.data.seed, CONFIG.data.spec)
    counts = dict.fromkeys(("image", "audio", "thermal"), CONFIG.data.train_scenes)
    data = ToyDataset.build(world, "train", counts, RENDER, GRID)
    image = train_stage1(CONFIG, data)
    bound = {m: bind_toy(image, data, CONFIG.stage2[m]) for m in ("audio", "thermal")}
    untrained = {}
    for modality, encoder in bound.items():
        tower = start_tower(image, encoder.config, "lora")
        untrained[modality] = Encoder(encoder.config, tower, image.text, encoder.logit_scale)
    test_world = World(CONFIG.data.seed + 1, CONFIG.data.spec)
    scenes = test_world.scenes("test", 64)
    test = ToyDataset.build(test_world, "test", dict.fromkeys(("image", "audio", "thermal"), 64), RENDER, GRID)
    yield image, bound, untrained, test, scenes
    torch.set_num_threads(threads)


def _evaluate(encoders: dict[str, Encoder], test: ToyDataset, scenes) -> dict:
    embeddings = {m: e.encode(test.inputs(m, range(len(scenes)), e.config.vision)) for m, e in encoders.items()}
    return evaluate_embeddings(encoders, embeddings, scenes, test.spec)


def test_binding_beats_the_untrained_encoders_by_a_wide_margin(trained):
    image, bound, untrained, test, scenes = trained
    after = _evaluate({"image": image, **bound}, test, scenes)
    before = _evaluate({"image": image, **untrained}, test, scenes)
    # Stage 1 learnt the language of colour and temperature.
    assert after["zero_shot"]["image"]["colour"] >= 0.8
    # Thermal: temperature, which the stills taught the language tower.
    assert after["zero_shot"]["thermal"]["temperature"] >= 0.85
    assert after["zero_shot"]["thermal"]["temperature"] >= before["zero_shot"]["thermal"]["temperature"] + 0.2
    # Audio tells the shape only by its sound; binding must place it by its shape's captions.
    audio_after, audio_before = after["zero_shot"]["audio"]["shape"], before["zero_shot"]["audio"]["shape"]
    assert audio_after >= 0.8 and audio_after >= audio_before + 0.3, (audio_before, audio_after)


def test_bound_encoders_save_in_the_official_layout(trained, tmp_path):
    _, bound, _, test, _ = trained
    for modality, encoder in bound.items():
        save_checkpoint(encoder, tmp_path / modality)
        config = json.loads((tmp_path / modality / "config.json").read_text())
        assert config["architectures"] == [f"LanguageBind{modality.capitalize()}"]
        assert config["vision_config"]["lora_r"] == 0  # merged
        loaded = load_checkpoint(tmp_path / modality)
        inputs = test.inputs(modality, range(8), loaded.config.vision)
        np.testing.assert_allclose(loaded.encode(inputs), encoder.encode(inputs), atol=1e-6)
        assert loaded.logit_scale == pytest.approx(encoder.logit_scale)
        assert loaded.logit_scale != pytest.approx(math.log(1 / 0.07))  # the temperature was learnt
