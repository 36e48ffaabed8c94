"""`lbsearch demo` end to end: generate a toy library, index it with a model set, query it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lbsearch.demo import demo_models_present, run_demo
from lbsearch.models import registry

TINY_SET = {
    "video": "video_ft",
    "audio": "audio_ft",
    "depth": "depth_lora",
    "thermal": "thermal_lora",
    "image": "image",
}


@pytest.fixture
def tiny_demo_set(tiny_checkpoints: Path, monkeypatch) -> None:
    """Stand the tiny checkpoints in for the demo set (same input size as the toy world)."""
    monkeypatch.setitem(registry.MODEL_SETS, "demo", {m: str(tiny_checkpoints / n) for m, n in TINY_SET.items()})


def test_demo_generates_indexes_and_queries(tiny_demo_set, tmp_path: Path) -> None:
    report = run_demo(tmp_path / "demo", scenes=6, workers=0)
    # 6 scenes x (video with its sound, a wav, and one RGB/depth/thermal scene item of three files)
    assert report.ingest.embedded == 6 * 5 and report.ingest.failed == 0
    assert [q.kind for q in report.queries] == [
        "text->video",
        "text->image",
        "text->audio",
        "audio->video (emergent)",
        "thermal->image (emergent)",
        "joint video+audio",
    ]
    assert all(q.hits for q in report.queries)
    joint = report.queries[-1].hits[0]
    assert set(joint.parts) == {"video", "audio"}
    again = run_demo(tmp_path / "demo", scenes=6, workers=0)
    assert again.ingest.embedded == 0 and again.ingest.plan["unchanged"] == 30


def test_demo_command_prints_queries_and_the_ui_hint(tiny_demo_set, tmp_path: Path) -> None:
    from lbsearch.cli import app

    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "d"), "--scenes", "4", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "audio->video (emergent)" in result.output
    assert "lbsearch ui --index" in result.output


def test_missing_demo_models_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    from lbsearch.cli import app

    monkeypatch.setitem(registry.MODEL_SETS, "demo", {"video": str(tmp_path / "nothing")})
    assert not demo_models_present()
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "demo models are missing" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(not demo_models_present(), reason="the trained demo models are not in lbsearch/assets yet")
def test_bundled_demo_models_find_the_right_scenes(tmp_path: Path) -> None:
    report = run_demo(tmp_path / "demo", scenes=30, workers=0)
    matched = [q.kind for q in report.queries if q.top_matches]
    assert len(matched) >= 5, [(q.kind, q.top_matches) for q in report.queries]
