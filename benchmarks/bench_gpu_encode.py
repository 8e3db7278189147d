"""GPU encode throughput of an NV-Embed-v2-shaped model against the FLOP ceiling.

    python benchmarks/bench_gpu_encode.py [--max-length 512] [--max-tokens 65536] [--batch-size 256]
    torchrun --nproc_per_node=8 benchmarks/bench_gpu_encode.py        # scaling across the GPUs of a node
    python benchmarks/bench_gpu_encode.py --smoke                      # a tiny model on the CPU: plumbing only

The model is a randomly initialised Mistral-7B with NV-Embed-v2's exact shapes (hidden 4096, 32 layers, 32
heads, 8 KV heads, intermediate 14336, vocabulary 32000), so it does the real model's FLOPs; it runs
bidirectionally in bfloat16 with transformers' SDPA attention and the harness's own 4-D key-padding mask
(``harness/models/bidirectional.py``), mean-pooled. The passages have SciFact's length distribution: each
bundled SciFact document's character count scaled to Mistral tokens (the corpus is 1,985,718 Mistral tokens,
``shared/reference/tokenizers.md``), capped at ``--max-length``; the ids are random. Batching is the harness's
``run_batches`` (longest first, a padded-token budget per batch, OOM back-off).

Ceiling: 2 × (non-embedding parameters) FLOPs per token at the bf16 matmul rate measured here (8192³ matmuls).
``ceiling_fraction`` = tokens/s ÷ that ceiling (attention's n² FLOPs are extra work not counted as useful).
Needs only torch, transformers and this repository (no mteb, hydra or omegaconf). Refuses to run the full
model without CUDA. Last line: ``SUMMARY tokens_per_s=… ceiling_fraction=…``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.engine.batching import BatchStats, run_batches  # noqa: E402
from harness.engine.distributed import setup  # noqa: E402
from harness.models import bidirectional as bidir  # noqa: E402

SCIFACT = ROOT / "harness" / "tasks" / "data" / "scifact" / "corpus.jsonl.gz"
SCIFACT_MISTRAL_TOKENS = 1_985_718  # shared/reference/tokenizers.md: title + " " + text, Mistral's tokenizer
NV_EMBED_V2 = dict(
    hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    intermediate_size=14336, vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
    rope_theta=10000.0, sliding_window=None,
)
SMOKE = dict(NV_EMBED_V2, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128)


def passage_lengths(max_length: int) -> np.ndarray:
    """SciFact's documents in Mistral tokens (estimated from characters), capped at ``max_length``."""
    with gzip.open(SCIFACT, "rt", encoding="utf-8") as handle:
        docs = [json.loads(line) for line in handle if line.strip()]
    chars = np.array([len(((d.get("title") or "") + " " + d["text"]).strip()) for d in docs], dtype=np.float64)
    tokens = np.maximum(1, np.round(chars * SCIFACT_MISTRAL_TOKENS / chars.sum())).astype(np.int64) + 1  # + <s>
    return np.minimum(tokens, max_length)


def matmul_rate(device: torch.device, size: int, repeats: int = 20) -> float:
    """Measured bf16 matmul FLOP/s (size³ products, after a warm-up)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(shape: dict, device: torch.device) -> torch.nn.Module:
    from transformers import MistralConfig, MistralModel

    config = MistralConfig(**shape, attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly: 14 GB, not 28 GB then a copy
    try:
        with torch.device(device):
            model = MistralModel(config)
    finally:
        torch.set_default_dtype(previous)
    bidir.make_bidirectional(model)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=65536, help="padded tokens per batch")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per batch at most")
    parser.add_argument("--docs", type=int, default=0, help="use the first N documents (0: all 5,183)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on whatever device: plumbing only")
    args = parser.parse_args()

    ctx = setup()
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("bench_gpu_encode.py needs CUDA (use --smoke for a CPU plumbing check)")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    shape = SMOKE if args.smoke else NV_EMBED_V2
    rate = matmul_rate(device, 1024 if args.smoke else 8192, 3 if args.smoke else 20)

    lengths = passage_lengths(args.max_length)
    if args.docs:
        lengths = lengths[: args.docs]
    rng = np.random.default_rng(0)
    items = [rng.integers(3, shape["vocab_size"], int(n)).tolist() for n in lengths]
    mine = [i for i in range(len(items)) if ctx.owns(i)]  # ranks take every world_size-th passage

    start = time.perf_counter()
    model = build_model(shape, device)
    build_s = time.perf_counter() - start
    embedding = model.embed_tokens.weight.numel()
    params = sum(p.numel() for p in model.parameters())
    linear = params - embedding - sum(p.numel() for n, p in model.named_parameters() if "norm" in n)

    def forward(rows: list[list[int]]) -> tuple[torch.Tensor, int]:
        ids, mask = bidir.pad_batch(rows, 0, "right", device)
        with torch.inference_mode():
            pooled = bidir.masked_mean(bidir.hidden_states(model, ids, mask), mask)
        return pooled, int(mask.sum())

    warm = sorted(mine, key=lambda i: -lengths[i])[: max(1, args.batch_size // 4)]
    run_batches([items[i] for i in warm], [int(lengths[i]) for i in warm], forward, args.batch_size,
                max_tokens=args.max_tokens)  # kernels compiled, memory pool warm
    sync(device)
    stats = BatchStats()
    start = time.perf_counter()
    vectors = run_batches([items[i] for i in mine], [int(lengths[i]) for i in mine], forward, args.batch_size,
                          max_tokens=args.max_tokens, stats=stats)
    sync(device)
    wall = time.perf_counter() - start
    assert vectors.shape == (len(mine), shape["hidden_size"]) and np.isfinite(vectors).all()

    parts = ctx.all_gather({"tokens": stats.tokens, "wall": wall, "padded": stats.padded_tokens, "rate": rate})
    tokens = sum(p["tokens"] for p in parts)
    padded = sum(p["padded"] for p in parts)
    span = max(p["wall"] for p in parts)
    tokens_per_s = tokens / span
    gpus = ctx.world_size
    ceiling = gpus * min(p["rate"] for p in parts) / (2 * linear)
    if not ctx.is_main:
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {gpus} x {name}; torch {torch.__version__}; measured bf16 matmul {rate / 1e12:.1f} TFLOP/s")
    print(f"model: {params / 1e9:.3f}B parameters ({linear / 1e9:.3f}B in matmuls), built in {build_s:.0f} s")
    print(f"passages: {len(items):,} ({tokens:,} tokens, cap {args.max_length}, padding x{padded / tokens:.2f}); "
          f"budget {args.max_tokens} padded tokens, <= {args.batch_size} rows; batch size after OOM back-off "
          f"{stats.working_batch_size} ({stats.oom_retries} retries)")
    print(f"encode: {span:.1f} s, {tokens_per_s:,.0f} tokens/s ({tokens_per_s / gpus:,.0f} per GPU); ceiling "
          f"{ceiling:,.0f} tokens/s (2 x {linear / 1e9:.2f}B FLOPs/token)")
    print(f"SUMMARY tokens_per_s={tokens_per_s:.0f} ceiling_fraction={tokens_per_s / ceiling:.3f}")
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
