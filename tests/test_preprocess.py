"""Preprocessing: parity with the official processors, time windows, decoders, conversions and bad input."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from lbsearch.errors import ConfigError, MediaError
from lbsearch.models.config import ModelConfig, VisionConfig
from lbsearch.preprocess import (
    PreprocessSettings,
    VideoFrames,
    audio_tensor,
    cut_window,
    depth_pixels,
    load_audio,
    normalize_fbank,
    preprocessor_for,
    probe,
    rgb_pixels,
    sample_indices,
    still_tensor,
    video_tensor,
)
from lbsearch.preprocess import audio as audio_module
from lbsearch.preprocess.common import clip_normalize

MODALITIES = ("video", "audio", "depth", "thermal", "image")
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Media the tests write themselves


def tone(seconds: float, rate: int, frequency: float, amplitude: float = 0.5, channels: int = 1) -> np.ndarray:
    """float32 [channels, samples] sine; channel c at frequency * (c + 1)."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * frequency * (c + 1) * t) for c in range(channels)]).astype(
        np.float32
    )


def write_pcm16(path: Path, samples: np.ndarray, rate: int) -> np.ndarray:
    """Write [C,S] floats as 16-bit WAV/FLAC; returns the float waveform a reader must give back (int16/32768)."""
    ints = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    soundfile.write(path, ints.T, rate, subtype="PCM_16")
    return ints.astype(np.float32) / 32768


def add_audio_stream(container: av.container.OutputContainer, channels: int, rate: int, codec: str) -> av.AudioStream:
    """An audio stream taking float samples (every stream must exist before the first packet is muxed)."""
    stream = container.add_stream(codec, rate=rate, layout="mono" if channels == 1 else "stereo")
    stream.format = next(f for f in stream.codec_context.codec.audio_formats if f.name.startswith("flt"))
    return stream


def encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, samples: np.ndarray) -> None:
    """Encode float samples [C,S] into ``stream`` and mux them."""
    block = stream.codec_context.frame_size or 1024
    for begin in range(0, samples.shape[1], block):
        chunk = samples[:, begin : begin + block]
        data = chunk if stream.format.is_planar else chunk.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=stream.format.name, layout=stream.layout)
        frame.sample_rate, frame.pts = stream.rate, begin
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_video(path: Path, frames: np.ndarray, fps: int = 10, audio: np.ndarray | None = None) -> None:
    """H.264 mp4 from uint8 frames [T,H,W,3], with an AAC track of ``audio`` [C,S] at 16 kHz when given."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        sound = add_audio_stream(container, audio.shape[0], 16000, "aac") if audio is not None else None
        for pixels in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(video.encode(None))
        if sound is not None:
            encode_audio(container, sound, audio)


def ramp_video(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames that brighten over time (frame i is grey level 5 i) over a fixed diagonal pattern."""
    pattern = (np.add.outer(np.arange(height), np.arange(width)) % 16).astype(np.uint8)
    frames = [np.repeat((pattern + 5 * i)[:, :, None], 3, axis=2) for i in range(count)]
    return np.stack(frames).astype(np.uint8)


def photo(height: int = 120, width: int = 160) -> Image.Image:
    """A deterministic RGB test picture (gradients plus texture)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=2).astype(np.uint8)
    return Image.fromarray(rgb)


def snr_db(decoded: torch.Tensor, original: np.ndarray) -> float:
    """Signal-to-noise ratio of a lossy decode, leaving out codec start-up and end padding (2048 samples each)."""
    middle = slice(2048, original.shape[1] - 2048)
    signal = original[:, middle]
    noise = decoded.numpy()[:, middle] - signal
    return float(10 * np.log10((signal**2).sum() / (noise**2).sum()))


def write_depth(path: Path, millimetres: np.ndarray) -> None:
    Image.fromarray(millimetres.astype(np.uint16)).save(path)


def media_files(media: Path, modality: str) -> list[Path]:
    return sorted(p for p in (media / modality).iterdir() if p.is_file())


# ---------------------------------------------------------------------------------------------------------------
# Parity with the official processors


@pytest.mark.parametrize("modality", MODALITIES)
def test_matches_official_processors(modality: str, media: Path, golden: Path) -> None:
    expected = np.load(golden / "preprocess" / f"{modality}.npz")
    files = media_files(media, modality)
    assert len(files) == sum(key.startswith("x") for key in expected.files)
    preprocess = preprocessor_for(modality)
    for i, path in enumerate(files):
        assert str(expected[f"name{i}"]) == path.name
        result = preprocess(path)
        reference = torch.from_numpy(expected[f"x{i}"])
        assert result.dtype == torch.float32
        assert result.shape == reference.shape, path
        assert torch.allclose(result, reference, atol=TOLERANCE, rtol=0), (path, (result - reference).abs().max())


@pytest.mark.parametrize("name", ["video_ft", "video_v15", "audio_ft", "audio_lora", "depth_lora", "image"])
def test_checkpoint_config_sets_input_shape(name: str, sample_media: Path, tiny_checkpoints: Path) -> None:
    config = ModelConfig.from_file(tiny_checkpoints / name / "config.json")
    # What the model takes: channels, the frames of a clip, then the picture or the mel x time grid.
    frames = (config.vision.num_frames,) if config.modality == "video" else ()
    expected_shape = (config.vision.num_channels, *frames, *config.vision.image_size)
    preprocess = preprocessor_for(config.modality, config.vision)
    assert tuple(preprocess(media_files(sample_media, config.modality)[0]).shape) == expected_shape


def test_vision_config_without_fixtures(tmp_path: Path) -> None:
    def vision(**extra: object) -> VisionConfig:
        return VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            patch_size=14,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            **extra,
        )

    wav = tmp_path / "a.wav"
    write_pcm16(wav, tone(1.0, 16000, 440), 16000)
    audio = preprocessor_for("audio", vision(image_size=(28, 98), num_mel_bins=28, target_length=98))
    assert audio.settings.num_mel_bins == 28
    assert tuple(audio(wav).shape) == (3, 28, 98)
    video_path = tmp_path / "v.mp4"
    write_video(video_path, ramp_video(12))
    video = preprocessor_for("video", vision(image_size=(56, 56), num_frames=4, add_time_attn=True))
    assert tuple(video(video_path).shape) == (3, 4, 56, 56)


def test_unknown_modality_and_unusable_settings() -> None:
    with pytest.raises(ConfigError, match="unknown modality"):
        preprocessor_for("smell")
    no_mel = PreprocessSettings(
        image_size=(224, 224),
        num_frames=8,
        num_mel_bins=0,
        target_length=0,
        sample_rate=16000,
        audio_mean=0.5,
        audio_std=0.5,
        max_depth=10.0,
    )
    with pytest.raises(ConfigError):
        preprocessor_for("audio", no_mel)


@pytest.mark.parametrize("modality", MODALITIES)
def test_preprocessors_pickle(modality: str) -> None:
    preprocess = preprocessor_for(modality)
    clone = pickle.loads(pickle.dumps(preprocess))
    assert type(clone) is type(preprocess)
    assert clone == preprocess
    assert clone.modality == modality
    assert clone.settings == PreprocessSettings.released()


def test_video_is_deterministic(sample_media: Path) -> None:
    path = sample_media / "video" / "0.mp4"
    preprocess = preprocessor_for("video")
    assert torch.equal(preprocess(path), preprocess(path))


def test_one_decoder_thread_gives_the_same_frames(sample_media: Path) -> None:
    # Ingestion decodes with one FFmpeg thread per file (a file per core); queries let FFmpeg choose.
    paths = media_files(sample_media, "video")
    assert paths
    for path in paths:
        with VideoFrames(path) as chosen, VideoFrames(path, decoder_threads=1) as single:
            assert (single.frame_count, single.fps) == (chosen.frame_count, chosen.fps)
            indices = chosen.indices(8, None, None)
            assert np.array_equal(np.asarray(single.read(indices)), np.asarray(chosen.read(indices)))


# ---------------------------------------------------------------------------------------------------------------
# Time windows


def test_sample_indices_cover_the_window() -> None:
    assert sample_indices(245, 30.0, 8) == [int(i) for i in np.linspace(0, 244, 8)]
    # Frame i shows at i / fps: [1 s, 2 s) at 10 fps holds frames 10..19, start included, end excluded.
    window = sample_indices(40, 10.0, 8, 1.0, 2.0)
    assert window[0] == 10
    assert window[-1] == 19
    assert window == sorted(window)
    # 0.1 * 30 is 3.0000000000000004 in floats; the frame at exactly 0.1 s still belongs to the window.
    assert sample_indices(100, 30.0, 2, 0.1, 0.2)[0] == 3
    open_ended = sample_indices(40, 10.0, 4, start=3.5)
    assert (open_ended[0], open_ended[-1]) == (35, 39)


def test_whole_range_windows_equal_whole_files(sample_media: Path) -> None:
    video = preprocessor_for("video")
    for path in media_files(sample_media, "video"):
        with VideoFrames(path) as frames:
            duration = frames.duration
        whole = video(path)
        assert torch.equal(video(path, 0.0, duration), whole)
        assert torch.equal(video(path, start=0.0), whole)
    audio = preprocessor_for("audio")
    for path in media_files(sample_media, "audio"):
        waveform, rate = load_audio(path)
        assert torch.equal(audio(path, 0.0, waveform.shape[1] / rate), audio(path))


def test_video_windows_follow_the_content(tmp_path: Path) -> None:
    path = tmp_path / "ramp.mp4"
    write_video(path, ramp_video(40), fps=10)
    preprocess = preprocessor_for("video")
    early, late = preprocess(path, 1.0, 2.0), preprocess(path, 2.0, 3.0)
    assert late.mean() > early.mean() + 0.5  # 10 grey levels later, in units of CLIP std
    # Decode once, cut many windows: the building blocks give the same tensors.
    with VideoFrames(path) as frames:
        assert frames.frame_count == 40
        assert frames.fps == pytest.approx(10.0)
        indices = frames.indices(8, 1.0, 2.0)
        assert all(10 <= i < 20 for i in indices)
        assert torch.equal(video_tensor(frames.read(indices), preprocess.settings), early)


def test_audio_windows_cut_before_resampling(tmp_path: Path) -> None:
    rate = 44100
    low, high = tone(2.0, rate, 440, channels=2), tone(2.0, rate, 3000, channels=2)
    whole, first_half = tmp_path / "whole.wav", tmp_path / "first.wav"
    write_pcm16(whole, np.concatenate([low, high], axis=1), rate)
    write_pcm16(first_half, low, rate)
    preprocess = preprocessor_for("audio")
    window = preprocess(whole, 0.0, 2.0)
    assert torch.equal(window, preprocess(first_half))
    assert not torch.allclose(window, preprocess(whole, 2.0, 4.0), atol=0.1)
    waveform, sample_rate = load_audio(whole)
    cut = cut_window(waveform, sample_rate, 2.0, 4.0)
    assert cut.shape == (2, 2 * rate)
    assert torch.equal(audio_tensor(cut, sample_rate, preprocess.settings), preprocess(whole, 2.0, 4.0))


def test_bad_windows(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    write_pcm16(wav, tone(1.0, 16000, 440), 16000)
    audio = preprocessor_for("audio")
    with pytest.raises(MediaError, match=r"a\.wav: empty time window"):
        audio(wav, 0.5, 0.5)
    with pytest.raises(MediaError, match="outside"):
        audio(wav, 5.0, 6.0)
    picture = tmp_path / "p.png"
    photo().save(picture)
    with pytest.raises(MediaError, match=r"p\.png: image inputs have no time axis"):
        preprocessor_for("image")(picture, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Audio decoding


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "PCM_U8", "FLOAT"])
def test_wav_sample_formats_scale_like_torchaudio(subtype: str, tmp_path: Path) -> None:
    # torchaudio's soundfile backend returns soundfile.read(dtype="float32"); PyAV decoding must agree exactly.
    path = tmp_path / f"{subtype}.wav"
    soundfile.write(path, tone(0.5, 22050, 330, channels=2).T, 22050, subtype=subtype)
    waveform, rate = load_audio(path)
    reference, reference_rate = soundfile.read(path, dtype="float32", always_2d=True)
    assert rate == reference_rate == 22050
    assert waveform.dtype == torch.float32
    assert torch.equal(waveform, torch.from_numpy(reference.T.copy()))


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT", "ULAW", "ALAW", "MS_ADPCM", "IMA_ADPCM", "GSM610"])
def test_a_wav_opened_from_its_header_decodes_as_with_ffmpeg_probing(
    subtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_audio skips FFmpeg's stream probing for WAV files (a speed-up): the samples must not change.
    path = tmp_path / f"{subtype}.wav"
    channels = 1 if subtype == "GSM610" else 2
    soundfile.write(path, tone(0.5, 22050, 330, channels=channels).T, 22050, subtype=subtype)
    opened_with = []
    real_open = audio_module.av.open
    monkeypatch.setattr(audio_module.av, "open", lambda *a, **k: opened_with.append(k["options"]) or real_open(*a, **k))
    waveform, rate = load_audio(path)
    assert opened_with == [audio_module._WAV_OPEN_OPTIONS] != [{}]  # the fast path was taken
    monkeypatch.setattr(audio_module, "_WAV_OPEN_OPTIONS", {})  # FFmpeg's defaults: the stream is probed
    probed, probed_rate = load_audio(path)
    assert rate == probed_rate == 22050 and waveform.shape[0] == channels
    assert torch.equal(waveform, probed)


def test_flac_is_lossless(tmp_path: Path) -> None:
    samples = tone(1.0, 44100, 440, channels=2)
    written = write_pcm16(tmp_path / "a.wav", samples, 44100)
    write_pcm16(tmp_path / "a.flac", samples, 44100)
    for name in ("a.wav", "a.flac"):
        waveform, rate = load_audio(tmp_path / name)
        assert rate == 44100
        assert torch.equal(waveform, torch.from_numpy(written))


def _write_soundfile(path: Path, samples: np.ndarray, rate: int, fmt: str, subtype: str) -> None:
    soundfile.write(path, samples.T, rate, format=fmt, subtype=subtype)


def _write_pyav(path: Path, samples: np.ndarray, rate: int, codec: str) -> None:
    with av.open(str(path), "w") as container:
        encode_audio(container, add_audio_stream(container, samples.shape[0], rate, codec), samples)


LOSSY: dict[str, Callable[[Path, np.ndarray, int], None]] = {
    "ogg": lambda p, s, r: _write_soundfile(p, s, r, "OGG", "VORBIS"),
    "mp3": lambda p, s, r: _write_soundfile(p, s, r, "MP3", "MPEG_LAYER_III"),
    "m4a": lambda p, s, r: _write_pyav(p, s, r, "aac"),
    "opus": lambda p, s, r: _write_pyav(p, s, r, "libopus"),
}


@pytest.mark.parametrize("extension", sorted(LOSSY))
def test_lossy_formats_decode_to_the_signal(extension: str, tmp_path: Path) -> None:
    rate = 48000  # opus only runs at 48 kHz; the others take it too
    samples = tone(1.0, rate, 440, channels=2)
    path = tmp_path / f"a.{extension}"
    LOSSY[extension](path, samples, rate)
    waveform, decoded_rate = load_audio(path)
    assert decoded_rate == rate
    assert waveform.shape[0] == 2
    assert rate <= waveform.shape[1] <= rate + 2048  # encoders may pad the last frame
    # Aligned and faithful: a shift of a few samples or a wrong scale would drop this far below 20 dB.
    assert snr_db(waveform, samples) > 20
    preprocessed = preprocessor_for("audio")(path)
    assert preprocessed.shape == (3, 112, 1036)
    assert torch.isfinite(preprocessed).all()


def test_audio_track_of_a_video(tmp_path: Path) -> None:
    samples = tone(2.0, 16000, 440)
    path = tmp_path / "with_sound.mp4"
    write_video(path, ramp_video(20), fps=10, audio=samples)
    waveform, rate = load_audio(path)
    assert rate == 16000
    assert waveform.shape[0] == 1
    assert snr_db(waveform, samples) > 20
    assert preprocessor_for("audio")(path).shape == (3, 112, 1036)
    assert preprocessor_for("video")(path).shape == (3, 8, 224, 224)
    info = probe(path)
    assert info.has_video
    assert info.has_audio
    assert info.sample_rate == 16000
    assert info.channels == 1
    assert info.frame_count == 20
    assert (info.width, info.height) == (64, 48)


def test_long_audio_takes_three_distinct_chunks(sample_media: Path) -> None:
    chunks = preprocessor_for("audio")(sample_media / "audio" / "long_stereo_44k_25s.wav")
    assert not torch.equal(chunks[0], chunks[1])
    assert not torch.equal(chunks[1], chunks[2])
    short = preprocessor_for("audio")(sample_media / "audio" / "0.wav")  # 10.2 s: shorter than 1036 frames
    assert torch.equal(short[0], short[1])
    assert torch.equal(short[1], short[2])


# ---------------------------------------------------------------------------------------------------------------
# Images, thermal and depth


def _as_png(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


@pytest.mark.parametrize("modality", ["image", "thermal"])
@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK"])
def test_non_rgb_images_are_converted_first(modality: str, mode: str, tmp_path: Path) -> None:
    converted = photo().convert(mode)
    path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    converted.save(path)
    with Image.open(path) as stored:
        assert stored.mode == mode
        rgb_path = _as_png(stored.convert("RGB"), tmp_path / "rgb.png")
    preprocess = preprocessor_for(modality)
    assert torch.equal(preprocess(path), preprocess(rgb_path))


def test_sixteen_bit_grey_image_scales_to_eight_bits(tmp_path: Path) -> None:
    grey16 = (np.add.outer(np.arange(100), np.arange(150)) * 173 % 65536).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey16).save(path)
    eight_bit = Image.fromarray(np.round(grey16 / 257.0).astype(np.uint8)).convert("RGB")
    preprocess = preprocessor_for("image")
    assert torch.equal(preprocess(path), preprocess(_as_png(eight_bit, tmp_path / "grey8.png")))


@pytest.mark.parametrize(("millimetres", "scaled"), [(5000, 0.5), (20000, 1.0), (0, 0.001), (10, 0.001)])
def test_depth_metres_are_clipped_and_scaled(millimetres: int, scaled: float, tmp_path: Path) -> None:
    path = tmp_path / "depth.png"
    write_depth(path, np.full((60, 80), millimetres))
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    expected = clip_normalize(torch.full((3, 224, 224), scaled))
    assert torch.allclose(preprocessor_for("depth")(path), expected, atol=1e-5)


def test_depth_keeps_sixteen_bit_precision(tmp_path: Path) -> None:
    near, far = tmp_path / "near.png", tmp_path / "far.png"
    write_depth(near, np.full((30, 30), 4000))
    write_depth(far, np.full((30, 30), 4001))
    preprocess = preprocessor_for("depth")
    difference = (preprocess(far) - preprocess(near)).mean(dim=(1, 2))
    assert torch.allclose(difference, 1e-4 / torch.tensor([0.26862954, 0.26130258, 0.27577711]), rtol=1e-2)


@pytest.mark.parametrize("max_depth", [10.0, 0.0])
def test_batched_still_paths_equal_the_per_file_preprocessors(max_depth: float, tmp_path: Path) -> None:
    # Training turns arrays into model inputs a batch at a time; each item must be what its file gives.
    rng = np.random.default_rng(0)
    settings = replace(PreprocessSettings.released(), image_size=(48, 48), max_depth=max_depth)
    photos = rng.integers(0, 256, (3, 40, 64, 3), dtype=np.uint8)  # not square: the resize and crop both act
    greys = rng.integers(0, 256, (3, 40, 64), dtype=np.uint8)
    depths = rng.integers(1, 20000, (3, 40, 64)).astype(np.uint16)
    batches = {
        "image": (photos, rgb_pixels(torch.from_numpy(photos))),
        "thermal": (greys, rgb_pixels(np.repeat(greys[..., None], 3, axis=-1))),
        "depth": (depths, depth_pixels(torch.from_numpy(depths.astype(np.int32)), max_depth)),
    }
    for modality, (arrays, pixels) in batches.items():
        paths = [tmp_path / f"{modality}{i}.png" for i in range(len(arrays))]
        for path, array in zip(paths, arrays, strict=True):
            Image.fromarray(array).save(path)
        per_file = torch.stack([preprocessor_for(modality, settings)(path) for path in paths])
        batched = still_tensor(pixels, settings.crop_size)
        assert batched.shape == (3, 3, 48, 48), modality
        assert torch.allclose(batched, per_file, atol=1e-6), (modality, float((batched - per_file).abs().max()))
        assert not torch.allclose(batched[0], batched[1])


def test_batched_fbank_normalisation_equals_the_per_clip_one() -> None:
    settings = replace(PreprocessSettings.released(), num_mel_bins=32, target_length=64)
    raw = replace(settings, audio_mean=0.0, audio_std=0.5)  # leaves the log-mel bank as it is
    waves = [torch.from_numpy(tone(0.8, 16000, frequency)) for frequency in (220.0, 440.0, 1000.0)]
    banks = torch.stack([audio_tensor(wave, 16000, raw) for wave in waves])
    expected = torch.stack([audio_tensor(wave, 16000, settings) for wave in waves])
    assert torch.allclose(normalize_fbank(banks, settings), expected, atol=1e-5)
    assert torch.allclose(normalize_fbank(banks.half(), settings), expected, atol=1e-2)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: always a MediaError that names the file


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_video(tmp: Path) -> Path:
    write_video(tmp / "cut.mp4", ramp_video(30))
    return _truncate(tmp / "cut.mp4")


def _truncated_wav(tmp: Path) -> Path:
    write_pcm16(tmp / "cut.wav", tone(1.0, 16000, 440), 16000)
    return _truncate(tmp / "cut.wav")


def _truncated_flac(tmp: Path) -> Path:
    write_pcm16(tmp / "cut.flac", tone(2.0, 16000, 440), 16000)
    return _truncate(tmp / "cut.flac")


def _truncated_jpeg(tmp: Path) -> Path:
    photo().save(tmp / "cut.jpg", quality=95)
    return _truncate(tmp / "cut.jpg")


def _truncated_depth(tmp: Path) -> Path:
    write_depth(tmp / "cut.png", np.random.default_rng(0).integers(500, 9000, (120, 160)))
    return _truncate(tmp / "cut.png")


def _junk(name: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return tmp / name

    return make


def _empty(name: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).touch()
        return tmp / name

    return make


def _missing(name: str) -> Callable[[Path], Path]:
    return lambda tmp: tmp / name


def _audio_only(tmp: Path) -> Path:
    write_pcm16(tmp / "sound.wav", tone(1.0, 16000, 440), 16000)
    return tmp / "sound.wav"


def _silent_video(tmp: Path) -> Path:
    write_video(tmp / "silent.mp4", ramp_video(10))
    return tmp / "silent.mp4"


def _short_audio(tmp: Path) -> Path:
    write_pcm16(tmp / "blip.wav", tone(0.02, 16000, 440), 16000)  # 320 samples: less than one 25 ms frame
    return tmp / "blip.wav"


def _short_audio_44k(tmp: Path) -> Path:
    write_pcm16(tmp / "blip44.wav", tone(0.024, 44100, 440), 44100)  # 1058 samples, 384 after resampling
    return tmp / "blip44.wav"


def _rgb_depth(tmp: Path) -> Path:
    photo().save(tmp / "rgb_depth.png")
    return tmp / "rgb_depth.png"


BAD_INPUTS: list[tuple[str, str, Callable[[Path], Path]]] = [
    *[(m, "missing", _missing(f"nope.{ext}")) for m, ext in [("video", "mp4"), ("audio", "wav"), ("image", "jpg")]],
    *[(m, "empty", _empty(f"empty.{ext}")) for m, ext in [("video", "mp4"), ("audio", "wav"), ("depth", "png")]],
    *[
        (m, "not media", _junk(f"junk.{ext}"))
        for m, ext in [("video", "mp4"), ("audio", "mp3"), ("audio", "wav"), ("depth", "png"), ("thermal", "jpg")]
    ],
    ("video", "truncated", _truncated_video),
    ("audio", "truncated wav", _truncated_wav),
    ("audio", "truncated flac", _truncated_flac),
    ("image", "truncated", _truncated_jpeg),
    ("depth", "truncated", _truncated_depth),
    ("video", "no video stream", _audio_only),
    ("audio", "no audio track", _silent_video),
    ("audio", "too short", _short_audio),
    ("audio", "too short after resampling", _short_audio_44k),
    ("depth", "three channels", _rgb_depth),
    ("image", "directory", lambda tmp: tmp),
]


@pytest.mark.parametrize(("modality", "case", "make"), BAD_INPUTS, ids=[f"{m}-{c}" for m, c, _ in BAD_INPUTS])
def test_bad_input_raises_media_error(modality: str, case: str, make: Callable[[Path], Path], tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(MediaError) as caught:
        preprocessor_for(modality)(path)
    assert caught.value.path == str(path)
    assert caught.value.reason
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("make", [_junk("junk.mp4"), _empty("empty.wav"), _missing("nope.mkv")])
def test_probe_rejects_bad_files(make: Callable[[Path], Path], tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(MediaError) as caught:
        probe(path)
    assert caught.value.path == str(path)


# ---------------------------------------------------------------------------------------------------------------
# Probing


def test_probe_shared_media(media: Path) -> None:
    _probe_agrees_with_the_decoders(media)


def test_probe_sample_media(sample_media: Path) -> None:
    _probe_agrees_with_the_decoders(sample_media)


def _probe_agrees_with_the_decoders(media: Path) -> None:
    for path in media_files(media, "video"):
        info = probe(path)
        with VideoFrames(path) as frames:
            first = frames.read([0])[0]
            assert info.frame_count == frames.frame_count
            assert info.fps == pytest.approx(frames.fps)
        assert (info.has_video, info.has_audio) == (True, False)
        assert (info.height, info.width) == first.shape[:2]
        assert info.duration == pytest.approx(info.frame_count / info.fps, abs=1 / info.fps)
    for path in media_files(media, "audio"):
        info = probe(path)
        waveform, rate = load_audio(path)
        assert (info.has_video, info.has_audio) == (False, True)
        assert (info.sample_rate, info.channels) == (rate, waveform.shape[0])
        assert info.duration == pytest.approx(waveform.shape[1] / rate, abs=1e-3)
    for modality in ("depth", "thermal", "image"):
        for path in media_files(media, modality):
            info = probe(path)
            with Image.open(path) as image:
                pixels = np.asarray(image)
            assert (info.has_video, info.has_audio, info.duration) == (False, False, None)
            assert (info.height, info.width) == pixels.shape[:2]
