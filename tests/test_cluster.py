"""Ingestion over Ray (`lbsearch.ingest.cluster`): the same library as the local pipeline, on a local Ray and on
a two-node cluster that loses a node mid-run, and a one-line error where Ray is not installed.

Ray starts once for the module: a head node with 2 CPUs and a capped object store (`ray.cluster_utils.Cluster`,
this machine only); the fault test adds a second node and kills it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import REPO
from ray.cluster_utils import Cluster
from typer.testing import CliRunner

from lbsearch.cli import app
from lbsearch.errors import ClusterError
from lbsearch.ingest import cluster
from lbsearch.ingest.decode import WINDOWS_PER_PART, WindowSpec
from lbsearch.ingest.pipeline import IngestOptions

pytest.register_assert_rewrite("ingest_fixtures")
from ingest_fixtures import (  # noqa: E402
    assert_consistent,
    copy_library,
    file_statuses,
    media_files,
    open_library,
    vector_table,
)

pytest_plugins = ["ingest_fixtures"]

SCENES = 8
OBJECT_STORE_BYTES = 300 << 20
# Short windows give the long recording more windows than one decode part holds: its parts travel apart.
OPTIONS = IngestOptions(windows=WindowSpec(2.0, 1.0))


@pytest.fixture(scope="module")
def ray_cluster():
    head = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False},
    )
    ray.init(address=head.address, runtime_env=cluster.worker_runtime_env(), log_to_driver=False)
    yield head
    ray.shutdown()
    head.shutdown()


@pytest.fixture(scope="module")
def library_root(toy_source: Path, media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy-world scenes, the shared media, and a file no decoder reads."""
    root = copy_library(toy_source, tmp_path_factory.mktemp("cluster") / "library", scenes=SCENES)
    shutil.copytree(media, root / "shared", ignore=shutil.ignore_patterns("*.md"))
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    return root


@pytest.fixture(scope="module")
def local_result(library_root: Path, models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The library through the local pipeline: (vector table, file statuses)."""
    with open_library(tmp_path_factory.mktemp("local") / "index", models=models) as library:
        report = library.add(library_root, options=OPTIONS)
        assert report.failed == 1 and report.embedded == len(media_files(library_root)) - 1
        return vector_table(library.db), file_statuses(library.db)


def assert_same_library(library, local_result: tuple) -> None:
    local_vectors, local_statuses = local_result
    vectors = vector_table(library.db)
    assert vectors.keys() == local_vectors.keys()
    assert max(float(np.abs(vectors[k][1] - local_vectors[k][1]).max()) for k in vectors) <= 1e-6
    assert file_statuses(library.db) == local_statuses
    assert_consistent(library)


def test_local_ray_gives_the_library_the_local_pipeline_gives(
    tmp_path, ray_cluster, library_root, models, local_result
):
    long_recording = str((library_root / "shared" / "audio" / "long_stereo_44k_25s.wav").resolve())
    with open_library(tmp_path / "index", models=models) as library:
        report = library.add(library_root, options=OPTIONS, ray="local")
        assert report.cluster == {"nodes": 1, "cpus": 2, "gpus": 0, "encode_actors": 1, "encode_device": "cpu"}
        assert report.errors.keys() == {str((library_root / "broken.mp4").resolve())}
        windows = [key for key in vector_table(library.db) if key[0] == long_recording and key[3] is not None]
        assert len(windows) > WINDOWS_PER_PART
        assert_same_library(library, local_result)

        again = library.add(library_root, options=OPTIONS, ray="local")
        assert (again.embedded, again.vectors, again.plan["unchanged"]) == (0, 0, len(media_files(library_root)))


def test_a_node_killed_mid_run_leaves_every_file_indexed_once(
    tmp_path, ray_cluster, library_root, models, local_result
):
    worker = ray_cluster.add_node(num_cpus=3, object_store_memory=OBJECT_STORE_BYTES)
    ray_cluster.wait_for_nodes()
    files = len(media_files(library_root))
    killed_at: list[int] = []

    def kill_the_worker_node(progress) -> None:
        if not killed_at and progress.files_done >= files // 4:
            killed_at.append(progress.files_done)
            ray_cluster.remove_node(worker, allow_graceful=False)

    index = tmp_path / "index"
    with open_library(index, models=models) as library:
        report = library.add(library_root, options=OPTIONS, progress=kill_the_worker_node, ray="local")
        assert report.cluster["nodes"] == 2 and not report.interrupted
        assert killed_at and killed_at[0] < files  # the node died with work still to do
        assert (report.embedded, report.failed) == (files - 1, 1)
        assert_same_library(library, local_result)
    verify = CliRunner().invoke(app, ["verify", "--index", str(index)])
    assert verify.exit_code == 0, verify.output


def test_a_root_a_node_does_not_see_as_the_driver_does_stops_the_run_before_it_starts(ray_cluster):
    # Paths under /proc/self differ from process to process: the driver's and a Ray worker's views disagree as a
    # node's would without the shared filesystem.
    own_thread = f"/proc/self/task/{os.getpid()}"
    with pytest.raises(ClusterError, match=rf"^node \S+ \(\w+\) cannot see it: {own_thread}; every root must be"):
        cluster.check_roots_visible([own_thread])
    with pytest.raises(ClusterError, match=r"^node \S+ \(\w+\) sees other files there: /proc/self/fd;"):
        cluster.check_roots_visible(["/proc/self/fd"])
    cluster.check_roots_visible([str(Path(__file__).parent)])


def test_ray_option_without_ray_installed_is_a_one_line_error(tmp_path, models, monkeypatch):
    # Ray Data and Ray itself as an interpreter without them has them: not importable.
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with open_library(tmp_path / "index", models=models):
        pass
    folder = tmp_path / "media"
    folder.mkdir()
    result = CliRunner().invoke(app, ["index", str(folder), "--index", str(tmp_path / "index"), "--ray", "local"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {cluster.MISSING_RAY}"]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_without_the_option_ray_is_never_imported(tmp_path, models, media):
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(media / "image" / "0.jpg", folder / "0.jpg")
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lbsearch.cli import app\n"
        f"result = CliRunner().invoke(app, ['index', {str(folder)!r}, '--index', {str(tmp_path / 'index')!r}, "
        f"'--model', 'image={models['image']}'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(name for name in sys.modules if name == 'ray' or name.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# The `lbsearch index --ray auto` command, in a process of its own joined to the module's cluster, committing
# every few files so that it can be killed between commits.
_DRIVER = """
import functools, sys
import ray
import lbsearch.ingest.pipeline
from lbsearch.ingest import cluster
ray.init(address=sys.argv.pop(1), runtime_env=cluster.worker_runtime_env(), log_to_driver=False)
lbsearch.ingest.pipeline.IngestOptions = functools.partial(
    lbsearch.ingest.pipeline.IngestOptions, commit_files=2, commit_seconds=60.0
)
from lbsearch.cli import app
app()
"""


@pytest.mark.slow
def test_the_driver_killed_mid_run_then_rerun_without_ray_indexes_every_file_once(
    tmp_path, ray_cluster, library_root, models, local_result
):
    index = tmp_path / "index"
    with open_library(index, models=models) as library:  # records the model set the command reads
        command = [sys.executable, "-c", _DRIVER, ray_cluster.address, "index", str(library_root), "--index",
                   str(index), "--window", "2", "--hop", "1", "--ray", "auto", "--json"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 240
            while sum(counts["ok"] for counts in library.db.counts()["files"].values()) < 4:
                assert driver.poll() is None, f"the command ended before it could be killed:\n{driver.stderr.read()}"
                assert time.monotonic() < deadline, "no commits from the Ray driver"
                time.sleep(0.05)
            driver.send_signal(signal.SIGKILL)
            assert driver.wait() == -signal.SIGKILL
        finally:
            driver.kill()
        # Files the killed run settled (embedded, or recorded as failed) are not done again.
        settled = sum(counts["ok"] + counts["error"] for counts in library.db.counts()["files"].values())
        assert 4 <= settled < len(media_files(library_root))
        report = library.add(library_root, options=OPTIONS)
        assert report.embedded + report.failed == len(media_files(library_root)) - settled
        assert report.plan["unchanged"] == settled
        assert_same_library(library, local_result)
