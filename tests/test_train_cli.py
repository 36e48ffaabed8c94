"""`lbsearch train` and `lbsearch eval`: one CI-sized `train toy` run whose written checkpoint set the other commands
then evaluate (`eval toyworld`, `eval benchmark`) and start from (`train files`); each command's JSON equals what the
Python API computes, and bad input is one `error:` line with exit 1, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lbsearch.cli import app
from lbsearch.eval.benchmarks import evaluate_benchmark, load_benchmark
from lbsearch.eval.toyworld import evaluate_toyworld
from lbsearch.modalities import MODALITIES
from lbsearch.models import load_checkpoint, load_model_set
from lbsearch.models.registry import MODEL_SETS
from lbsearch.toyworld import LibraryLayout, World, write_scene
from lbsearch.train import BOUND_MODALITIES, preset

runner = CliRunner()
CONFIG = preset("test")
RENDER = CONFIG.data.render
# The test preset's world keeps one attribute combination out of training: its held-out split has one scene.
TOYWORLD_SCENES = ["--test-scenes", "16", "--heldout-scenes", "1"]


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    """`lbsearch train toy --preset test`: the checkpoint folder, the JSON report and the progress records."""
    out = tmp_path_factory.mktemp("toy-set")
    # One thread: towers this small gain nothing from a second, and on a busy runner hand-offs stall them.
    result = runner.invoke(app, ["train", "toy", "--preset", "test", "--out", str(out), "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    progress = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    return out, json.loads(result.stdout), progress


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error:"), result.stderr
    return result.stderr


def _checkpoint_options(folder: Path) -> list[str]:
    return [option for m in MODALITIES for option in ("--model", f"{m}={folder / m}")]


def test_train_toy_writes_a_loadable_set_and_reports_what_it_measured(toy_set):
    out, report, progress = toy_set
    assert report["command"] == f"lbsearch train toy --preset test --out {out} --eval-seed 1 --threads 1"
    assert report["config"]["name"] == "test" and report["threads"] == 1
    for modality in MODALITIES:
        assert (out / modality / "config.json").is_file()
        assert report["sizes_bytes"][modality] == sum(p.stat().st_size for p in (out / modality).iterdir())
    assert set(report["timings_s"]) == {"generate", "stage1", *(f"stage2_{m}" for m in BOUND_MODALITIES),
                                        "evaluate", "total"}
    # The progress records are the training loops' own: stage 1 and every binding, up to the last step.
    assert any(r.get("stage") == 1 for r in progress)
    finished = {r["modality"] for r in progress
                if r.get("stage") == 2 and r["step"] == CONFIG.stage2[r["modality"]].schedule.steps - 1}
    assert finished == set(BOUND_MODALITIES)
    # The reported metrics are those of the written files, on the preset's world.
    loaded = load_model_set({m: out / m for m in MODALITIES})
    threads = torch.get_num_threads()
    torch.set_num_threads(report["threads"])  # the same float sums as the run's own evaluation
    try:
        again = evaluate_toyworld(loaded, 1, CONFIG.data.spec)
    finally:
        torch.set_num_threads(threads)
    assert json.loads(json.dumps(again)) == report["results"]
    # Stage 1 learnt colour (test_train.py checks binding against untrained towers).
    assert report["results"]["bars"]["zero-shot colour from image"]["passed"] is True


def _unit_values(results: dict) -> list[float]:
    """Every zero-shot accuracy and recall of both splits."""
    values = []
    for split in ("test", "heldout"):
        part = results[split]
        values += [v for tasks in part["zero_shot"].values() for v in tasks.values()]
        groups = [v for k, v in part.items() if k.startswith("text_to_")] + list(part["emergent"].values())
        groups += [part["joint"]["video"], part["joint"]["video+audio"]]
        values += [v for metrics in groups for k, v in metrics.items() if k.startswith("R@")]
    return values


def test_eval_toyworld_prints_every_metric_as_the_api_computes_it(toy_set):
    out, _, _ = toy_set
    args = ["eval", "toyworld", "--seed", "3", "--preset", "test", *_checkpoint_options(out), *TOYWORLD_SCENES]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert results["seed"] == 3 and results["source"] == "arrays"
    for split, scenes in (("test", 16), ("heldout", 1)):
        part = results[split]
        assert part["scenes"] == scenes
        assert set(part["zero_shot"]) == set(MODALITIES)
        assert {f"text_to_{m}" for m in MODALITIES} <= set(part)
        assert set(part["emergent"]) == {"audio->video", "audio->image", "depth->image", "thermal->image",
                                         "depth->video", "thermal->video"}
        assert set(part["joint"]) == {"video", "video+audio", "gain_R@1"}
    values = _unit_values(results)
    assert len(values) > 50 and all(0.0 <= v <= 1.0 for v in values)
    assert all(bar["passed"] is not None for bar in results["bars"].values())
    expected = evaluate_toyworld(load_model_set({m: out / m for m in MODALITIES}), 3, CONFIG.data.spec, 16, 1)
    assert results == json.loads(json.dumps(expected))

    # The tables name every metric group; bars of modalities left out say so.
    some = [option for m in ("video", "audio") for option in ("--model", f"{m}={out / m}")]
    tables = runner.invoke(app, [*args[:6], *some, *TOYWORLD_SCENES])
    assert tables.exit_code == 0, tables.output
    for title in ("Zero-shot, test", "Retrieval, heldout", "audio->video, emergent", "Joint, test:", "bars"):
        assert title in tables.stdout, title
    assert "depth" not in tables.stdout.split("bars")[0] and "not measured" in tables.stdout


def test_eval_benchmark_on_class_folders(toy_set, tmp_path):
    out, _, _ = toy_set
    root = tmp_path / "nyud"
    for index, scene in enumerate(World(9).scenes("test", 4)):
        path = write_scene(scene, tmp_path / "written", RENDER, LibraryLayout(modalities=("depth",)))["depth"]
        folder = root / ("bedroom", "dining_room")[index % 2]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    result = runner.invoke(app, ["eval", "benchmark", "nyud", str(root), "--model", str(out / "depth"), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    expected = evaluate_benchmark(load_checkpoint(out / "depth"), load_benchmark("nyud", root))
    assert scores == expected and scores["n"] == 4 and 0.0 <= scores["top1"] <= 1.0

    table = runner.invoke(app, ["eval", "benchmark", "nyud", str(root), "--model", str(out / "depth")])
    assert table.exit_code == 0 and "top1" in table.stdout

    missing = tmp_path / "no-such-folder"
    error = _error_line(runner.invoke(app, ["eval", "benchmark", "nyud", str(missing), "--model", str(out / "depth")]))
    assert str(missing) in error.replace("\n", "")
    error = _error_line(runner.invoke(app, ["eval", "benchmark", "esc50", str(root), "--model", str(out / "depth")]))
    assert "no audio files" in error


def test_train_files_binds_from_a_manifest(toy_set, tmp_path):
    out, _, _ = toy_set
    lines = []
    for scene in World(2).scenes("train", 4):
        path = write_scene(scene, tmp_path, RENDER, LibraryLayout(modalities=("depth",)))["depth"]
        lines.append(json.dumps({"path": str(path.relative_to(tmp_path)), "caption": scene.caption}))
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    target = tmp_path / "bound"
    args = ["train", "files", str(manifest), "--modality", "depth", "--start", str(out / "image"), "--out",
            str(target), "--steps", "2", "--batch-size", "4", "--warmup", "1", "--device", "cpu", "--workers", "0"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["out"] == str(target) and summary["modality"] == "depth" and summary["steps"] == 2
    assert [json.loads(line)["step"] for line in result.stderr.splitlines()] == [0, 1]
    assert (target / "model.safetensors").is_file()
    bound = load_checkpoint(target)
    assert bound.modality == "depth" and bound.logit_scale == pytest.approx(summary["logit_scale"])
    # It was trained: no longer the image tower it started from.
    start = load_checkpoint(out / "image")
    pixels = bound.preprocess(tmp_path / json.loads(lines[0])["path"])[None]
    assert not torch.allclose(bound.encode(pixels), start.encode(pixels), atol=1e-4)

    error = _error_line(runner.invoke(app, [*args[:2], str(tmp_path / "none.jsonl"), *args[3:]]))
    assert "none.jsonl" in error and "manifest" in error
    for start_spec, message in ((str(out / "audio"), "is a audio checkpoint"),
                                ("open_clip:ViT-B-32", "open_clip:MODEL_NAME:PRETRAINED")):
        changed = [start_spec if a == str(out / "image") else a for a in args]
        assert message in _error_line(runner.invoke(app, changed))
    assert "is for binding video, not depth" in _error_line(runner.invoke(app, [*args, "--frames", "4"]))


def test_train_toy_checks_a_saved_stage_one_before_rendering(toy_set, tmp_path):
    out, _, _ = toy_set
    # The test preset's image tower reads 32-pixel images; the toy preset renders 56-pixel scenes.
    args = ["train", "toy", "--preset", "toy", "--stage1", str(out / "image"), "--bind", "thermal", "--out",
            str(tmp_path / "set")]
    error = _error_line(runner.invoke(app, args))
    assert f"--stage1 {out / 'image'}" in error.replace("\n", "") and "32-pixel images" in error
    assert "'toy' preset renders 56-pixel scenes" in error
    assert not (tmp_path / "set").exists()


def test_bad_options_are_one_clear_error(tmp_path, monkeypatch):
    error = _error_line(runner.invoke(app, ["train", "toy", "--preset", "huge", "--out", str(tmp_path)]))
    assert "unknown training preset 'huge'" in error
    error = _error_line(runner.invoke(app, ["train", "toy", "--preset", "test", "--ablations", "image"]))
    assert "can be bound or ablated" in error
    missing = tmp_path / "no-such-folder" / "report.json"
    error = _error_line(runner.invoke(app, ["train", "toy", "--preset", "test", "--report", str(missing)]))
    assert f"the folder {missing.parent} does not exist" in error
    error = _error_line(runner.invoke(app, ["eval", "toyworld", "--model", "smell=/somewhere"]))
    assert "--model 'smell=/somewhere'" in error
    error = _error_line(runner.invoke(app, ["eval", "toyworld", "--models", "nonesuch"]))
    assert "unknown model set 'nonesuch'" in error
    # The demo set before its checkpoints exist: the loader's error names the missing folder.
    absent = tmp_path / "demo_models"
    monkeypatch.setitem(MODEL_SETS, "demo", {m: str(absent / m) for m in MODALITIES})
    error = _error_line(runner.invoke(app, ["eval", "toyworld"]))
    assert str(absent) in error.replace("\n", "")
