"""Whole runs through the engine, each against the uninterrupted single-process reference: a run killed
mid-corpus resumes from its cache and ends with the same scores; torchrun with two CPU ranks (gloo) gives the
same scores; a submitit_local multirun over two tasks writes both result files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, run_cli
from tests.engine.conftest import HASH_DIR, TASK, run_args, scores_of

KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
import harness.engine.cache as cache

original = cache.CacheEntry.write_shard

def write_then_die(self, shard, vectors):
    original(self, shard, vectors)
    if self.manifest["key"]["role"] == "document":  # the first corpus shard is on disk: die, no cleanup
        os.kill(os.getpid(), signal.SIGKILL)

cache.CacheEntry.write_shard = write_then_die
from harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_from_the_cache(tiny_beir: Path, reference_scores: dict, tmp_path: Path) -> None:
    out, cache = tmp_path / "results", tmp_path / "cache"
    script = tmp_path / "kill_after_first_shard.py"
    script.write_text(KILL_AFTER_FIRST_SHARD)
    args = run_args(tiny_beir, out, cache)
    killed = subprocess.run(
        [sys.executable, str(script), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / HASH_DIR / f"{TASK}.json").exists()
    records = sorted(p.name for p in cache.rglob("shard-*.json"))
    assert len(records) == 1  # one finished shard survived the kill

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "5 shards (1 cached, 4 encoded here)" in resumed.stdout + resumed.stderr
    assert scores_of(out) == reference_scores


@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").exists(), reason="torchrun not installed")
def test_torchrun_two_cpu_ranks_equal_one_process(tiny_beir: Path, reference_scores: dict, tmp_path: Path) -> None:
    out = tmp_path / "results"
    # each rank its own cache folder, as on nodes that share no disk: rank 1's shards must travel to rank 0
    cache = f"{tmp_path}/cache/rank${{oc.env:RANK}}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "harness",
         *run_args(tiny_beir, out, cache)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "per rank [3, 2]" in log  # the length-sorted shards were split across the two ranks
    assert scores_of(out) == reference_scores
    assert {p.name for p in (out / HASH_DIR).iterdir()} == {f"{TASK}.json", "model_meta.json", "harness"}
    assert len(list((tmp_path / "cache" / "rank1").rglob("shard-*.npy"))) == 2
    assert len(list((tmp_path / "cache" / "rank0").rglob("shard-*.npy"))) == 5  # its own three and rank 1's two
    assert proc.stdout.count("nDCG@10") == 1  # one table: only rank 0 reports


def test_submitit_local_multirun_writes_both_results(
    tiny_beir: Path, reference_scores: dict, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    args = run_args(tiny_beir, out, tmp_path / "cache", name="TinyA,TinyB")
    proc = run_cli(
        args[0], "-m", "hydra/launcher=submitit_local", *args[1:], f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.launcher.timeout_min=10",
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for name in ("TinyA", "TinyB"):
        assert scores_of(out, name) == reference_scores
    shutil.rmtree(tmp_path / "sweep", ignore_errors=True)
