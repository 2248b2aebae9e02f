"""The stage cache stays within its size: least recently used outputs go first, never one a build
holds, and a run that would not fit on the disk is refused before it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import BasaltError
from builder import cache
from builder.locks import Lock

ROOT = Path(__file__).resolve().parents[3]
MIB = 1 << 20


def output(stages: Path, sid: str, mib: int, used: float) -> Path:
    path = stages / sid
    (path / "tree").mkdir(parents=True)
    (path / "tree" / "blob").write_bytes(os.urandom(64) * (mib * MIB // 64))
    (path / "stage.json").write_text(json.dumps({"name": sid}))
    os.utime(path / "stage.json", (used, used))
    return path


def test_prune_removes_least_recently_used_first_down_to_the_bound(tmp_path: Path) -> None:
    stages = tmp_path / "stages"
    for n, sid in enumerate(["old", "middle", "new"]):
        output(stages, sid, 2, 1_000_000 + n)
    cache.touch(stages / "old")  # used just now: the newest
    pruned = cache.prune(tmp_path, max_bytes=5 * MIB, keep_free=0)
    assert pruned.removed == 1 and not (stages / "middle").exists()
    assert (stages / "old").exists() and (stages / "new").exists()
    assert 4 * MIB <= pruned.size <= 5 * MIB and pruned.freed >= 2 * MIB
    assert cache.prune(tmp_path, max_bytes=5 * MIB, keep_free=0).removed == 0  # within bounds: nothing


def test_an_output_a_build_holds_is_never_removed(tmp_path: Path) -> None:
    stages = tmp_path / "stages"
    output(stages, "held", 1, 1_000_000)
    output(stages, "free", 1, 1_000_001)
    lock = Lock(tmp_path / "stage-locks" / "held.lock")
    lock.take(exclusive=False)
    try:
        pruned = cache.prune(tmp_path, max_bytes=0, keep_free=0)
    finally:
        lock.close()
    assert (stages / "held" / "stage.json").is_file() and not (stages / "free").exists()
    assert pruned.removed == 1 and pruned.kept == 1


def test_what_a_killed_build_left_is_removed_and_a_running_ones_kept(tmp_path: Path) -> None:
    stages = tmp_path / "stages"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (stages / f"tmp-rootfs-{dead.pid}-1" / "out").mkdir(parents=True)
    (stages / f"tmp-rootfs-{os.getpid()}-1" / "out").mkdir(parents=True)
    cache.prune(tmp_path, max_bytes=1 << 40, keep_free=0)
    assert not (stages / f"tmp-rootfs-{dead.pid}-1").exists()
    assert (stages / f"tmp-rootfs-{os.getpid()}-1").exists()


def test_the_disk_keeps_its_free_space_even_under_the_size_bound(tmp_path: Path) -> None:
    stages = tmp_path / "stages"
    output(stages, "a", 1, 1_000_000)
    # more free space asked for than any disk has: everything that may go goes
    pruned = cache.prune(tmp_path, max_bytes=1 << 40, keep_free=1 << 60)
    assert pruned.removed == 1 and not (stages / "a").exists()


@pytest.mark.parametrize(("text", "expected"), [("40G", 40 << 30), ("512M", 512 << 20), ("1.5T", 3 << 39),
                                                ("1024", 1024), ("2GiB", 2 << 30), (" 3 g ", 3 << 30)])
def test_sizes(text: str, expected: int) -> None:
    assert cache.parse_size(text, "X") == expected


@pytest.mark.parametrize("text", ["", "lots", "-1G", "1Q", "1e9", "G"])
def test_a_size_that_is_not_one_is_refused_with_a_hint(text: str) -> None:
    with pytest.raises(BasaltError, match="is not a size") as exc:
        cache.parse_size(text, "BASALT_CACHE_MAX")
    assert "e.g. 40G" in exc.value.render()


def test_the_cli_refuses_a_run_the_disk_cannot_hold(tmp_path: Path) -> None:
    env = {**os.environ, "BASALT_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "builder", "cache", "--prune", "--need", "1000000T"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "GiB needed" in done.stderr and "hint:" in done.stderr and "Traceback" not in done.stderr
    ok = subprocess.run([sys.executable, "-m", "builder", "cache", "--need", "1M"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "0 stage outputs" in ok.stdout


def test_sizing_outputs_while_another_build_writes_and_removes_them(tmp_path: Path) -> None:
    """Two builds end at once and both prune (CI saw one walk an output while the other renamed its
    .size file): what vanishes mid-walk is skipped, never an error."""
    import shutil
    import threading
    stages = tmp_path / "stages"
    stop = threading.Event()

    def churn() -> None:  # the other build: memoising sizes, collecting and republishing outputs
        n = 0
        while not stop.is_set():
            n += 1
            path = stages / f"o{n % 4}"
            if path.exists():
                for i in range(20):
                    tmp = path / f".size.{i}.tmp"
                    tmp.write_text("1")
                    os.replace(tmp, path / ".size")
                shutil.rmtree(path, ignore_errors=True)
            else:
                output(stages, f"o{n % 4}", 0, 1000.0 + n)
                for i in range(30):
                    (path / "tree" / f"f{i}").write_bytes(b"x")

    worker = threading.Thread(target=churn, daemon=True)
    stages.mkdir()
    worker.start()
    try:
        for _ in range(300):
            for entry in cache.entries(stages):
                assert entry.size >= 0
                (entry.path / ".size").unlink(missing_ok=True)  # sized again, by walking, next pass
    finally:
        stop.set()
        worker.join(10)
