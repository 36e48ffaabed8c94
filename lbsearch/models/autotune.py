"""``precision="auto"``: the fastest precision whose embeddings agree with fp32, measured once per machine and model
shape and remembered.

The best precision depends on the CPU: with ``avx512_bf16`` or AMX bf16 runs far faster than fp32, without them
slower (docs/benchmarks.md); int8 needs no special instructions but costs some accuracy. So nothing is assumed: a
micro-benchmark times each candidate on a small calibration batch (the first real inputs when there are any) and
compares its embeddings with fp32's. The result is cached in ``$LBSEARCH_CACHE`` (default
``~/.cache/lbsearch``), keyed by the CPU (model name and flags) or GPU, the torch version, the thread count and the
model's shape, so the benchmark runs once per machine and model shape.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lbsearch.models import precision as precisions
from lbsearch.models.config import ModelConfig

log = logging.getLogger(__name__)

MIN_COSINE = 0.999  # every calibration item must agree with fp32 at least this well
CALIBRATION_ITEMS = 4
# Candidates are timed in alternating rounds (the best of each counts), so that a burst of load from other programs
# does not decide the choice; rounds go on while the benchmark is still short.
MAX_ROUNDS = 5
BUDGET_SECONDS = 5.0
# A modality tower smaller than this (a ViT-B has ~88M parameters, a ViT-L ~300M) is never the slow stage of an
# ingest on a CPU (decoding is): `auto` keeps it at fp32, exact, without measuring.
HEAVY_ENCODER_PARAMETERS = 20_000_000
# CPU features under which bf16 matmuls run in hardware; without them PyTorch emulates bf16 and it is slower
# than fp32 (docs/benchmarks.md, Encoders), so it is not worth timing.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The flags that decide CPU speed at each precision, shown by `lbsearch status` and the encode benchmark.
RELEVANT_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx512f", "avx2", "fma", "f16c")
CACHE_FILE = "precision.json"


@dataclass(frozen=True)
class Trial:
    """One candidate precision on the calibration batch: items per second and the worst cosine to fp32."""

    precision: str
    items_per_second: float
    min_cosine: float


def cpu_flags() -> frozenset[str]:
    """The flags of this machine's CPU (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def candidates(device: str | torch.device, flags: Iterable[str] | None = None) -> tuple[str, ...]:
    """The precisions worth timing on ``device``, fp32 first. On a CPU bf16 only where the CPU runs it in
    hardware; on CUDA bf16 only where the GPU supports it."""
    kind = precisions.device_type(device)
    allowed = precisions.DEVICE_PRECISIONS.get(kind, (precisions.FP32,))
    if kind == "cpu":
        has_bf16 = bool(BF16_CPU_FLAGS & set(cpu_flags() if flags is None else flags))
        return tuple(p for p in allowed if p != "bf16" or has_bf16)
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        return tuple(p for p in allowed if p != "bf16")
    return allowed


def choose(trials: Iterable[Trial]) -> str:
    """The fastest precision that agrees with fp32 (fp32 itself always qualifies)."""
    fair = [t for t in trials if t.precision == precisions.FP32 or t.min_cosine >= MIN_COSINE]
    return max(fair, key=lambda t: t.items_per_second).precision if fair else precisions.FP32


def example_inputs(config: ModelConfig, count: int, seed: int = 0) -> torch.Tensor:
    """Random model inputs of the right shape: the calibration batch when no real input is at hand."""
    height, width = config.vision.image_size
    frames = (config.vision.num_frames,) if config.vision.num_frames > 1 else ()
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, *frames, height, width, generator=generator)


def cache_key(config: ModelConfig, device: str | torch.device) -> str:
    kind = precisions.device_type(device)
    if kind == "cuda":
        hardware = {"gpu": torch.cuda.get_device_name(torch.device(device))}
    else:
        hardware = {"cpu": cpu_name(), "flags": sorted(cpu_flags()), "threads": torch.get_num_threads()}
    shape = {"modality": config.modality, "projection_dim": config.projection_dim, **asdict(config.vision)}
    raw = json.dumps({**hardware, "torch": torch.__version__, "shape": shape}, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def cache_path() -> Path:
    base = os.environ.get("LBSEARCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "lbsearch"
    return Path(base).expanduser() / CACHE_FILE


def _read_cache() -> dict[str, dict]:
    try:
        entries = json.loads(cache_path().read_text())
    except (OSError, ValueError):  # none yet, or a torn write: measure again
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(key: str, entry: Mapping[str, object]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = {**_read_cache(), key: dict(entry)}
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=2, sort_keys=True))
        temporary.replace(path)  # atomic: concurrent runs never read half a file
    except OSError as exc:  # a read-only home: the choice is still made, only measured again next time
        log.warning("cannot cache the precision choice in %s: %s", path, exc)


def _run(tower: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype) -> tuple[float, torch.Tensor]:
    device = next(tower.parameters()).device
    inputs = batch.to(device, dtype=dtype)
    with torch.inference_mode():
        start = time.perf_counter()
        out = tower(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, F.normalize(out.float(), dim=-1).cpu()


def measure(tower: torch.nn.Module, batch: torch.Tensor, names: Iterable[str]) -> list[Trial]:
    """Time each precision on ``batch`` with a converted copy of the fp32 ``tower`` and compare its embeddings
    with fp32's."""
    towers = {
        name: tower if name == precisions.FP32 else precisions.apply_to_tower(copy.deepcopy(tower), name)
        for name in names
    }
    dtypes = {name: precisions.FLOAT_TYPES.get(name, torch.float32) for name in towers}
    for name, converted in towers.items():  # warm-up: one-time costs (allocations, kernel choice) stay out
        _run(converted, batch[:1], dtypes[name])
    best = dict.fromkeys(towers, float("inf"))
    outputs: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    for round_index in range(MAX_ROUNDS):
        if round_index and time.perf_counter() - started > BUDGET_SECONDS:
            break
        for name, converted in towers.items():
            seconds, outputs[name] = _run(converted, batch, dtypes[name])
            best[name] = min(best[name], seconds)
    reference = outputs[precisions.FP32]
    return [
        Trial(name, batch.shape[0] / best[name], float((outputs[name] * reference).sum(-1).min())) for name in towers
    ]


def parameter_count(tower: torch.nn.Module) -> int:
    return sum(p.numel() for p in tower.parameters())


def resolve(config: ModelConfig, tower: torch.nn.Module, batch: torch.Tensor | None = None) -> str:
    """The precision ``auto`` stands for, for this fp32 ``tower`` on its device: fp32 for a light tower, else
    from the cache, else measured on ``batch`` (a few real inputs; random ones when None) and cached."""
    device = next(tower.parameters()).device
    if parameter_count(tower) < HEAVY_ENCODER_PARAMETERS:
        return precisions.FP32
    key = cache_key(config, device)
    cached = _read_cache().get(key)
    if cached is not None and cached.get("precision") in precisions.DEVICE_PRECISIONS.get(device.type, ()):
        return cached["precision"]
    names = candidates(device)
    if len(names) == 1:
        return names[0]
    batch = example_inputs(config, CALIBRATION_ITEMS) if batch is None else batch[:CALIBRATION_ITEMS]
    started = time.perf_counter()
    trials = measure(tower, batch, names)
    chosen = choose(trials)
    log.info(
        "precision auto for %s %s: %s (%s; %.1f s)",
        config.modality,
        device.type,
        chosen,
        ", ".join(f"{t.precision} {t.items_per_second:.2f}/s cos>={t.min_cosine:.4f}" for t in trials),
        time.perf_counter() - started,
    )
    _write_cache(key, {"precision": chosen, "modality": config.modality, "trials": [asdict(t) for t in trials]})
    return chosen
