"""The multilingual benchmark configs (conf/benchmark/miracl.yaml, mlqa.yaml, mldr.yaml): every entry names a
split and subset that mteb's registered task has, with the headline metric of NVIDIA's tables."""

from __future__ import annotations

import pytest

from harness.report.aggregate import load_benchmark


@pytest.mark.parametrize(("benchmark", "task", "n"), [
    ("miracl", "MIRACLRetrieval", 18), ("mlqa", "MLQARetrieval", 42), ("mldr", "MultiLongDocRetrieval", 13),
])
def test_benchmark_entries_exist_in_mteb(benchmark: str, task: str, n: int) -> None:
    from harness.mteb_import import import_mteb

    bench = load_benchmark(benchmark)
    assert bench.metric == "recall_at_5" and len(bench.tasks) == n
    meta = import_mteb().get_task(task).metadata
    for entry in bench.tasks:
        assert entry.name == task and entry.local_folder is None
        assert entry.split in meta.eval_splits and entry.subset in meta.eval_langs, entry
    if benchmark == "mlqa":  # cross-lingual pairs only
        assert all(len(set(t.subset.split("-"))) == 2 for t in bench.tasks)
