"""Peak memory of an ingest against a file's length: one file per run, each in a fresh process.

For each file the ingest (`Library.add`, decoding in the same process: ``workers=0``, so one process holds
everything) runs in a new Python process with the tiny toy-size models (random weights in the official
architecture, saved as official-format checkpoints: `benchmarks.ingest.tiny_encoders`). Reported: the process's
resident set once the models are loaded, before the ingest ("base", VmRSS), and its peak from there to the end
("peak", VmHWM after a reset through /proc/self/clear_refs); the growth is what the file cost. Files:

- WAVs of 1 minute, 10 minutes, 1 hour and 3 hours, 16 kHz mono 16-bit: sparse files (a header, then a hole
  read back as silence) so that they take no disk space; decoding reads every byte all the same;
- an hour of video (32x32 H.264 at 1 frame/s, Matroska, with an 8 kHz PCM sound track);
- a 9000x9000 RGB PNG (81 megapixels).

``--whole`` also measures, for the WAVs up to ``--whole-limit`` seconds, the whole-file input made from the whole
waveform held in memory (`load_audio` then `audio_tensor`: what the ingest does for a track of at most
``AUDIO_HELD_VALUES`` values, and did for every track before) in its own process, side by side. The machine is
shared: times vary with its load, the memory figures do not. Run from the repository root:

    python3 -m benchmarks.memory
    python3 -m benchmarks.memory --whole --whole-limit 600 --windows 60 60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from benchmarks.ingest import machine, tiny_encoders

WAV_SECONDS = (60, 600, 3600, 3 * 3600)


def write_sparse_wav(path: Path, seconds: int, rate: int = 16000) -> Path:
    """A 16-bit mono WAV of ``seconds`` of silence that takes no disk space: a header, then a hole."""
    data = seconds * rate * 2
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
    fmt += (2 * rate).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    header = b"RIFF" + (36 + data).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little") + fmt
    header += b"data" + data.to_bytes(4, "little")
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + data)
    return path


def write_long_video(path: Path, seconds: int, fps: int = 1, size: int = 32, rate: int = 8000) -> Path:
    """An H.264 Matroska video of ``seconds`` at a tiny size with a PCM sound track: long, and cheap to write."""
    rng = np.random.default_rng(5)
    with av.open(str(path), mode="w", format="matroska") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = size, size, "yuv420p"
        video.options = {"preset": "ultrafast"}
        sound = container.add_stream("pcm_s16le", rate=rate)
        sound.layout = "mono"
        for index in range(seconds * fps):
            picture = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), format="rgb24")
            picture.pts = index
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
        block = 60 * rate
        for index in range(seconds // 60):
            pcm = (rng.standard_normal(block) * 3000).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, index * block, Fraction(1, rate)
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    return path


def write_big_png(path: Path, side: int = 9000) -> Path:
    Image.new("RGB", (side, side), (40, 160, 90)).save(path)
    return path


# The resident set (VmRSS) and its high-water mark since the last reset (VmHWM), in MB. The mark is reset (Linux's
# clear_refs) once the models are loaded: loading them peaks higher than it ends, and would hide what a file costs.
_RESIDENT = """
def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
def resident_mb():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return status_mb("VmRSS")
"""

_INGEST = _RESIDENT + """
import json, sys, time
from lbsearch.library import Library
from lbsearch.ingest.decode import WindowSpec
from lbsearch.ingest.pipeline import IngestOptions
root, index, models, length, hop = sys.argv[1:6]
with Library.open(index, device="cpu") as lib:
    lib.use_models(json.loads(models))
    loaded = [lib.encoder(modality) for modality in json.loads(models)]  # the base includes the models
    base = resident_mb()
    started = time.perf_counter()
    report = lib.add(root, options=IngestOptions(workers=0, windows=WindowSpec(float(length), float(hop))))
    seconds = time.perf_counter() - started
peak = status_mb("VmHWM")
print(json.dumps({"base": base, "peak": peak, "seconds": seconds, "vectors": report.vectors,
                  "failed": report.failed, "errors": report.errors}))
"""

_WHOLE = _RESIDENT + """
import json, sys, time
from lbsearch.models import load_checkpoint
from lbsearch.preprocess import PreprocessSettings, audio_tensor, load_audio
settings = PreprocessSettings.from_vision_config(load_checkpoint(sys.argv[2]).config.vision)
base = resident_mb()
started = time.perf_counter()
waveform, rate = load_audio(sys.argv[1])
audio_tensor(waveform, rate, settings)
seconds = time.perf_counter() - started
peak = status_mb("VmHWM")
print(json.dumps({"base": base, "peak": peak, "seconds": seconds}))
"""


def run_python(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the measured process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", nargs=2, type=float, default=(10.0, 5.0), metavar=("LENGTH", "HOP"))
    parser.add_argument("--whole", action="store_true", help="also measure the whole-waveform path of before")
    parser.add_argument("--whole-limit", type=int, default=600, help="longest WAV (s) for --whole")
    parser.add_argument("--video-seconds", type=int, default=3600)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lbsearch-memory-") as scratch:
        folder = Path(scratch)
        tiny_encoders(folder / "models")
        models = json.dumps({m: str(folder / "models" / m) for m in ("video", "audio", "image")})
        cases: list[tuple[str, Callable[[Path], Path]]] = [
            (f"WAV {seconds // 60} min", lambda p, s=seconds: write_sparse_wav(p / f"{s}.wav", s))
            for seconds in WAV_SECONDS
        ]
        video_label = f"video {args.video_seconds // 60} min"
        cases.append((video_label, lambda p: write_long_video(p / "v.mkv", args.video_seconds)))
        cases.append(("PNG 9000x9000", lambda p: write_big_png(p / "big.png")))
        length, hop = args.windows
        print(f"Machine: {machine()}. Windows {length:g} s every {hop:g} s; decoding in the ingest's process.\n")
        print("| file | size on disk (apparent) | vectors | base RSS MB | peak RSS MB | growth MB | seconds |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        whole_rows = []
        for number, (label, write) in enumerate(cases):
            root = folder / f"media{number}"
            root.mkdir()
            path = write(root)
            result = run_python(_INGEST, str(root), str(folder / f"index{number}"), models, *map(str, args.windows))
            if result["failed"]:
                raise SystemExit(f"{label}: the ingest failed: {result['errors']}")
            print(
                f"| {label} | {path.stat().st_size / 2**20:,.1f} MiB | {result['vectors']} | {result['base']:.0f} "
                f"| {result['peak']:.0f} | {result['peak'] - result['base']:.0f} | {result['seconds']:.1f} |",
                flush=True,
            )
            seconds = int(path.stem) if path.suffix == ".wav" else None
            if args.whole and seconds is not None and seconds <= args.whole_limit:
                whole = run_python(_WHOLE, str(path), str(folder / "models" / "audio"))
                whole_rows.append((label, result, whole))
            path.unlink()
        if whole_rows:
            print(
                "\nThe whole-file input from the whole waveform held in memory, beside the streamed ingest above:\n"
            )
            print("| file | whole waveform: growth MB | ingest, streamed: growth MB | ratio |")
            print("|---|---:|---:|---:|")
            for label, result, whole in whole_rows:
                streamed, held = result["peak"] - result["base"], whole["peak"] - whole["base"]
                print(f"| {label} | {held:.0f} | {streamed:.0f} | {held / max(streamed, 1):.1f}x |")


if __name__ == "__main__":
    main()
