"""On CUDA: half-precision encoders against fp32, a FAISS GPU index against the CPU one, an ingest on the GPU.

Every test here is marked ``gpu`` and skipped without CUDA (``pytest -m gpu`` runs them; scripts/gpu_check.sh
installs what they need first).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from benchmarks.encode import large_config
from lbsearch import Library
from lbsearch.ingest.pipeline import IngestOptions
from lbsearch.models import autotune, build_encoder, load_checkpoint
from lbsearch.models.precision import apply_to_tower
from lbsearch.models.registry import model_set
from lbsearch.storage.vectorindex import VectorIndex
from lbsearch.toyworld import LIBRARY_PATHS, World, write_library

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU visible to torch)"),
]


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBSEARCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_half_precision_large_encoders_agree_with_fp32(precision: str, modality: str) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(large_config(modality), device="cuda")
    encoder.text = None
    batch = autotune.example_inputs(encoder.config, 4)
    reference = encoder.encode(batch)
    apply_to_tower(encoder.vision, precision)
    cosines = (encoder.encode(batch) * reference).sum(-1)
    assert cosines.min() >= autotune.MIN_COSINE, cosines


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_demo_models_agree_with_fp32(precision: str) -> None:
    for modality, source in model_set("demo").items():
        exact = load_checkpoint(source, "cuda")
        half = load_checkpoint(source, "cuda", precision)
        batch = autotune.example_inputs(exact.config, 8)
        assert (half.encode(batch) * exact.encode(batch)).sum(-1).min() >= autotune.MIN_COSINE, modality
        texts = ["a red circle moving left", "the sound of rain"]
        assert (half.encode_text(texts) * exact.encode_text(texts)).sum(-1).min() >= autotune.MIN_COSINE


def test_auto_on_cuda_picks_a_cuda_precision() -> None:
    config = large_config("image")
    encoder = build_encoder(replace(config, vision=replace(config.vision, num_hidden_layers=4)), device="cuda")
    chosen = autotune.resolve(encoder.config, encoder.vision, autotune.example_inputs(encoder.config, 8))
    assert chosen in ("fp32", "fp16", "bf16")


@pytest.mark.parametrize(("factory", "agreement"), [("Flat", 1.0), ("IVF64,Flat", 0.95)])
def test_faiss_gpu_index_gives_the_cpu_hits(factory: str, agreement: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same vectors indexed on the GPU and on the CPU: the same hits (exact search), or nearly (IVF: k-means
    on the GPU places its centroids a little differently)."""
    assert faiss.get_num_gpus() > 0, "faiss sees no GPU: install the gpu extra (faiss-gpu-cu12)"
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.05 * rng.standard_normal((50, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(100, 5100, dtype=np.int64)
    _, gpu_hits = VectorIndex.build(vectors, ids, factory=factory).search(queries, 10)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    _, cpu_hits = VectorIndex.build(vectors, ids, factory=factory).search(queries, 10)
    overlap = np.mean([len(set(g) & set(c)) / 10 for g, c in zip(gpu_hits, cpu_hits, strict=True)])
    assert overlap >= agreement


def test_ingest_on_the_gpu(tmp_path: Path) -> None:
    root = write_library(tmp_path / "toy", World(0).scenes("test", 6), workers=1).parent
    with Library.open(tmp_path / "index", device="cuda", precision="auto") as lib:
        lib.use_models("demo")
        report = lib.add(root, options=IngestOptions(workers=2))
        assert report.failed == 0 and report.embedded == 6 * len(LIBRARY_PATHS)
        assert lib.encoder("image").device.type == "cuda"
        precisions = {g["modality"]: set(g["precisions"]) for g in lib.status()["vectors"]}
        assert all(found <= {"fp32", "fp16", "bf16"} and found for found in precisions.values())
        hits = lib.search("a red circle", modalities=["image"], k=3)
        assert len(hits) == 3
