"""run_batches: longest first, input order restored, out-of-memory back-off (simulated) halves and completes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.engine.batching import BatchStats, plan_batches, report_progress, run_batches


def vector_of(item: str) -> list[float]:
    return [float(len(item)), float(sum(map(ord, item)) % 97)]


def test_longest_first_and_input_order_restored() -> None:
    items = ["a" * n for n in (3, 9, 1, 7, 7, 2, 12, 5)]
    seen: list[list[int]] = []

    def forward(batch: list[str]) -> np.ndarray:
        seen.append([len(x) for x in batch])
        return np.array([vector_of(x) for x in batch])

    out = run_batches(items, [len(x) for x in items], forward, batch_size=3)
    assert seen[0] == [12, 9, 7]  # the longest batch first: an OOM shows at once
    assert [n for batch in seen for n in batch] == sorted((len(x) for x in items), reverse=True)
    np.testing.assert_array_equal(out, np.array([vector_of(x) for x in items], dtype=np.float32))


def test_simulated_oom_halves_the_batch_and_completes() -> None:
    items = [f"text {i} " + "x" * (i % 13) for i in range(100)]
    sizes: list[int] = []
    ooms = 0

    def forward(batch: list[str]) -> torch.Tensor:
        nonlocal ooms
        sizes.append(len(batch))
        if len(batch) > 8:
            ooms += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.tensor([vector_of(x) for x in batch], dtype=torch.bfloat16)

    stats = BatchStats()
    emptied: list[int] = []
    out = run_batches(items, [len(x) for x in items], forward, 32, stats=stats, on_oom=lambda: emptied.append(1))
    assert sizes[:3] == [32, 16, 8]  # halved twice, then the size that fits is kept
    assert set(sizes[3:]) <= {8, 4}  # the last batch holds the remainder
    assert (stats.requested_batch_size, stats.working_batch_size, stats.oom_retries) == (32, 8, 2)
    assert stats.halvings == [16, 8] and len(emptied) == ooms == 2
    assert stats.items == len(items)
    expected = torch.tensor([vector_of(x) for x in items], dtype=torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(out, expected)


def test_oom_at_batch_size_one_and_other_errors_propagate() -> None:
    def always_oom(batch: list[str]) -> np.ndarray:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_batches(["a", "b", "c"], [1, 1, 1], always_oom, 2, on_oom=lambda: None)

    def broken(batch: list[str]) -> np.ndarray:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        run_batches(["a", "b"], [1, 1], broken, 2)


def test_token_budget_and_progress_reports() -> None:
    lengths = [100, 90, 50, 40, 10, 10, 10, 10, 5]
    assert plan_batches(lengths, batch_size=4, max_tokens=200) == [2, 4, 3]
    reports: list[tuple[int, int]] = []

    def forward(batch: list[int]) -> tuple[np.ndarray, int]:
        return np.ones((len(batch), 2)), 7 * len(batch)  # the adapter's own token count wins

    with report_progress(lambda items, tokens: reports.append((items, tokens))):
        run_batches(list(range(9)), lengths, forward, 4, max_tokens=200)
    assert reports == [(2, 14), (4, 28), (3, 21)]
