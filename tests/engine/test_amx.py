"""The AMX score-and-threshold kernel: its hits and group maxima equal torch's bf16 products, it is built once and
reused, and where it cannot run the search falls back to torch's bf16 path (``prefilter=amx`` then says why)."""

from __future__ import annotations

import math
import os
import signal
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.engine import amx
from harness.engine.search import SearchStats, exact_search, id_ranks

needs_kernel = pytest.mark.skipif(amx.load() is None, reason="no AMX kernel on this machine (CPU or compiler)")


def _reference(d16: torch.Tensor, q16: torch.Tensor) -> torch.Tensor:
    return q16.double() @ d16.double().t()  # [queries, documents]; the kernel accumulates the same in fp32


@needs_kernel
@pytest.mark.parametrize(("n", "m", "dim"), [(1000, 70, 45), (2048, 256, 384), (33, 1, 32), (5, 3, 7), (1100, 300, 64)])
def test_hits_and_group_maxima_equal_torch(n: int, m: int, dim: int) -> None:
    """m = 300: more queries than one of the kernel's query blocks (256)."""
    kernel = amx.load()
    gen = torch.Generator().manual_seed(n + m + dim)
    d16 = torch.randn(n, dim, generator=gen).bfloat16()
    q16 = torch.randn(m, dim, generator=gen).bfloat16()
    ref = _reference(d16, q16)
    lower = torch.quantile(ref.float(), 0.9, dim=1)  # about a tenth of the pairs are hits
    docs, packed = kernel.pad_docs(d16), kernel.pack_queries(q16)
    query, doc = kernel.hits(docs, packed, lower, n)
    got = torch.zeros(m, n, dtype=torch.bool)
    got[query, doc] = True
    assert query.numel() == int(got.sum())  # no pair twice, none from the padding
    margin = 1e-5 * dim * float(ref.abs().max())  # fp32 accumulation order differs from the reference's
    clear = (ref - lower[:, None].double()).abs() > margin
    assert torch.equal(got[clear], (ref >= lower[:, None].double())[clear])
    gmax = kernel.group_max(docs, packed, n)
    whole = n // 32 * 32
    expected = ref[:, :whole].reshape(m, n // 32, 32).amax(2).t().float()
    assert gmax.shape == (n // 32, m)
    torch.testing.assert_close(gmax, expected, atol=margin, rtol=0)


@needs_kernel
def test_more_hits_than_the_first_buffer_holds() -> None:
    kernel = amx.load()
    d16 = torch.randn(4096, 64).bfloat16()
    q16 = torch.randn(40, 64).bfloat16()
    query, doc = kernel.hits(kernel.pad_docs(d16), kernel.pack_queries(q16), torch.full((40,), -torch.inf), 4096)
    assert query.numel() == 40 * 4096  # every pair, past the first buffer's capacity
    assert len(set(zip(query.tolist(), doc.tolist(), strict=True))) == 40 * 4096


@needs_kernel
def test_first_chunk_floor_from_group_maxima_is_exact() -> None:
    rng = np.random.default_rng(21)
    # small integers: scores exact in fp32 and bf16 (ties are real ties)
    d = rng.integers(-3, 4, size=(16384, 32)).astype(np.float32)
    q = rng.integers(-3, 4, size=(48, 32)).astype(np.float32)
    d[:1024] = np.clip(q[0] + rng.integers(-1, 2, size=(1024, 32)), -3, 3)  # query 0's floor lands too high
    ids = [f"d{i}" for i in range(len(d))]
    chunks = [(d[s : s + 1024], np.arange(s, s + 1024)) for s in range(0, len(d), 1024)]
    stats = SearchStats()
    scores, idx = exact_search(
        q, lambda: iter(chunks), top_k=20, id_rank=id_ranks(ids), similarity="dot", prefilter="amx", stats=stats
    )
    assert stats.prefilter == "amx" and stats.uncertified >= 1 and stats.passes == 2
    # the one dense block is the second round's (a lone query, no floor); the first chunk took the fused path
    assert stats.dense_blocks == 1
    torch_path = SearchStats()
    exact_search(
        q, lambda: iter(chunks), top_k=20, id_rank=id_ranks(ids), similarity="dot", prefilter="bf16", stats=torch_path
    )
    assert torch_path.dense_blocks == 2
    ref = q @ d.T
    for row in range(len(q)):
        order = sorted(range(len(ids)), key=lambda j, row=row: (ref[row, j], ids[j]), reverse=True)[:20]
        assert idx[row].tolist() == order
        np.testing.assert_array_equal(scores[row], ref[row, order])


def test_disabled_kernel_falls_back_and_says_why(monkeypatch) -> None:
    monkeypatch.setattr(amx, "_loaded", {})
    monkeypatch.setenv("HARNESS_AMX_KERNEL", "0")
    assert amx.load() is None and amx.unavailable_reason() == "HARNESS_AMX_KERNEL=0"
    q = np.eye(4, 8, dtype=np.float32)
    d = np.eye(8, dtype=np.float32)
    stats = SearchStats()
    _, idx = exact_search(q, [(d, np.arange(8))], top_k=2, id_rank=np.arange(8), prefilter="auto", stats=stats)
    assert stats.prefilter in ("bf16", "none") and idx[:, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="HARNESS_AMX_KERNEL=0"):
        exact_search(q, [(d, np.arange(8))], top_k=2, id_rank=np.arange(8), prefilter="amx")


def test_a_compiler_that_fails_is_reported_not_raised(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(amx, "_loaded", {})
    monkeypatch.setattr(amx, "_cpu_flags", lambda: {"amx_tile", "amx_bf16", "avx512f", "avx512bw"})
    monkeypatch.setattr(amx.platform, "system", lambda: "Linux")
    monkeypatch.setattr(amx.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exits 1 without building anything
    assert amx.load() is None
    assert "could not build bf16_threshold.c" in amx.unavailable_reason()
    assert not list(tmp_path.iterdir())  # nothing half-built (nor a temporary file) left behind


@needs_kernel
def test_built_once_then_reused(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(tmp_path))
    compiler = amx._compiler()
    first = amx._build(compiler)
    assert isinstance(first, type(tmp_path)) and first.parent == tmp_path
    stamp = first.stat().st_mtime_ns
    assert amx._build(compiler) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_kernel_loads_where_the_cpu_has_amx() -> None:
    """Where AMX and a compiler are present the kernel must load: a failing self-check is a failure here, not a
    quiet skip of the tests above."""
    from harness.engine.device import cpu_flags

    wanted = {"amx_tile", "amx_bf16", "avx512f", "avx512bw"}
    if not wanted <= cpu_flags() or amx._compiler() is None or os.environ.get("HARNESS_AMX_KERNEL") == "0":
        assert amx.load() is None and amx.unavailable_reason()
        return
    assert amx.load() is not None, amx.unavailable_reason()


@needs_kernel
def test_nan_scores_are_never_hits() -> None:
    kernel = amx.load()
    d16 = torch.randn(64, 32).bfloat16()
    q16 = torch.randn(40, 32).abs().add(0.1).bfloat16()
    d16[5, 3] = float("nan")
    d16[9, 0], d16[9, 1] = float("inf"), float("-inf")  # inf - inf: NaN
    d16[11, 2] = float("inf")  # +inf or -inf scores: ordered like any others
    lower = torch.full((40,), -torch.inf)
    query, doc = kernel.hits(kernel.pad_docs(d16), kernel.pack_queries(q16), lower, 64)
    assert not bool(((doc == 5) | (doc == 9)).any())
    assert query.numel() == 40 * 62 and int((doc == 11).sum()) == 40


@needs_kernel
@pytest.mark.parametrize("scale", [2.0**-80, 2.0**-140, 1e20, 3e37])
def test_conversion_norms_neither_underflow_nor_overflow(scale: float) -> None:
    """Squares of tiny residuals underflow fp32 and squares of huge values overflow it: the kernel's norms must
    be those computed in float64."""
    kernel = amx.load()
    x = torch.randn(300, 70, generator=torch.Generator().manual_seed(1)) * scale
    _, norm, err = kernel.to_bf16(x)
    ref_norm = float(torch.linalg.vector_norm(x.double(), dim=1).max())
    ref_err = float(torch.linalg.vector_norm((x - x.bfloat16().float()).double(), dim=1).max())
    assert ref_err > 0
    assert ref_norm <= norm <= ref_norm * (1 + 1e-6) and ref_err <= err <= ref_err * (1 + 1e-6)


@needs_kernel
def test_conversion_norms_say_nan_when_a_value_is_not_finite() -> None:
    kernel = amx.load()
    for value in (float("nan"), float("inf")):
        x = torch.randn(9000, 40)  # three pieces: the bad row in the middle one
        x[5000, 7] = value
        _, norm, _ = kernel.to_bf16(x)
        assert not math.isfinite(norm)


def _fake_compiler(folder: Path) -> str:
    """A "compiler" that writes a few bytes to its ``-o`` file (the last argument), into the file as it is."""
    script = folder / "fakecc"
    script.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo fakecc 1; exit 0; }\nfor a; do out="$a"; done\n'
                      'printf lib > "$out"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def private_tmp(monkeypatch, tmp_path) -> Path:
    """The system temporary folder, as the kernel build sees it."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(amx.tempfile, "gettempdir", lambda: str(root))
    return root


def test_an_unwritable_kernel_dir_falls_back_to_a_private_one(monkeypatch, tmp_path, private_tmp) -> None:
    configured = tmp_path / "configured"
    configured.mkdir()
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(configured))
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # a read-only folder (root ignores permission bits: simulated)
        if Path(dir) == configured:
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(amx.tempfile, "mkstemp", mkstemp)
    built = amx._build(_fake_compiler(tmp_path))
    assert isinstance(built, Path) and built.parent.parent == private_tmp, built
    assert built.parent.stat().st_uid == os.getuid() and stat.S_IMODE(built.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(built.stat().st_mode) == 0o755
    assert not list(configured.iterdir())
    assert amx._build(_fake_compiler(tmp_path)) == built  # and found there next time


def test_a_kernel_dir_others_can_write_to_is_not_used(monkeypatch, tmp_path, private_tmp) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could plant a library here
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(shared))
    compiler = _fake_compiler(tmp_path)
    built = amx._build(compiler)
    assert isinstance(built, Path) and built.parent.parent == private_tmp and not list(shared.iterdir())
    # the private fallback itself, if someone else made it or opened it up, is refused too: no kernel at all
    built.unlink()
    built.parent.chmod(0o777)
    assert isinstance(amx._build(compiler), str) and not list(built.parent.iterdir())
    if os.geteuid() == 0:
        built.parent.chmod(0o700)
        os.chown(built.parent, 65534, 65534)
        assert isinstance(amx._build(compiler), str) and not list(built.parent.iterdir())


def test_a_library_others_can_write_to_is_not_loaded(monkeypatch, tmp_path, private_tmp) -> None:
    monkeypatch.setenv("HARNESS_KERNEL_DIR", str(tmp_path / "kernels"))
    compiler = _fake_compiler(tmp_path)
    built = amx._build(compiler)
    assert isinstance(built, Path) and built.parent == tmp_path / "kernels"
    built.chmod(0o666)
    again = amx._build(compiler)
    assert again != built and isinstance(again, Path) and again.parent.parent == private_tmp


def _fake_kernel() -> amx.ThresholdKernel:
    """A kernel object whose library functions are never called: for its thread pool alone."""
    return amx.ThresholdKernel(SimpleNamespace(harness_bf16_hits=SimpleNamespace(), harness_to_bf16=SimpleNamespace()))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_concurrent_calls_make_one_thread_pool(monkeypatch, two_threads) -> None:
    made = []

    class SlowPool(ThreadPoolExecutor):  # widens the window between "no pool yet" and "pool made"
        def __init__(self, *args, **kwargs):
            made.append(self)
            time.sleep(0.2)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(amx, "ThreadPoolExecutor", SlowPool)
    kernel = _fake_kernel()
    results: list[list[int] | None] = [None] * 4

    def call(i: int) -> None:
        results[i] = kernel._map(lambda x: x * 2, [1, 2, 3])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for pool in made:
        pool.shutdown()
    assert results == [[2, 4, 6]] * 4 and len(made) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_makes_its_own_thread_pool(two_threads) -> None:
    kernel = _fake_kernel()
    assert kernel._map(lambda x: x + 1, list(range(8))) == list(range(1, 9))  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: its copy of the pool has no threads
        code = 2
        try:
            torch.set_num_threads(2)
            code = 0 if kernel._map(lambda x: x + 1, list(range(8))) == list(range(1, 9)) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on its parent's thread pool")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
