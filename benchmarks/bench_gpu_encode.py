"""GPU encode throughput of NV-Embed-v2, as ``harness run`` encodes a corpus, against the FLOP ceiling.

    python benchmarks/bench_gpu_encode.py                                   # conf/model/nv-embed-v2.yaml as shipped
    python benchmarks/bench_gpu_encode.py --batch-tokens 32768,65536,131072  # a sweep (first value -> SUMMARY)
    torchrun --nproc_per_node=8 benchmarks/bench_gpu_encode.py              # every GPU of a node: summed tokens/s
    python benchmarks/bench_gpu_encode.py --smoke                           # a tiny model on the CPU: plumbing only

The model is the harness's own ``NVEmbedAdapter`` (``harness/models/nv_embed.py``: the stock ``MistralModel``
run bidirectionally with a 4-D key-padding mask, then NV-Embed's latent-attention pooling) built from a
config.json with NV-Embed-v2's exact shapes (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336,
vocabulary 32000; latent head: 512 latents, 8 heads of 4096), its weights drawn at random instead of read from
safetensors, so it does the real model's FLOPs. dtype, autocast, max_length, batch_size and batch_tokens come from
``conf/model/nv-embed-v2.yaml`` (fp16 weights under fp16 autocast on CUDA; its batch_size rows and batch_tokens
padded tokens per batch) unless overridden. Encoding goes through ``NVEmbedAdapter.embed_ids``: ``run_batches``
(longest first, the padded-token budget, out-of-memory back-off), padding, the backbone, the latent head,
pooling, L2.

The passages have SciFact's length distribution: each bundled SciFact document's character count scaled to
Mistral tokens (the corpus is 1,985,718 Mistral tokens, ``shared/reference/tokenizers.md``) plus <s> and </s>,
as NV-Embed tokenises a document (no instruction); the ids are random (tokenising is CPU work, off this path).

Ceiling: 2 FLOPs per token per weight that multiplies every token (the backbone's linear layers and the latent
head's to_q, to_out and feed-forward; not the embedding table) at the bf16 matmul rate measured in this run
(8192³ products). ``ceiling_fraction`` = tokens/s ÷ that ceiling (attention's n² FLOPs are extra work, not
counted as useful). Needs only torch, transformers and this repository (no mteb, hydra or omegaconf). Refuses
to run the full model without CUDA. Last line: ``SUMMARY tokens_per_s=… ceiling_fraction=…``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.engine import batching  # noqa: E402
from harness.engine.distributed import setup  # noqa: E402
from harness.models import nv_embed  # noqa: E402

SCIFACT = ROOT / "harness" / "tasks" / "data" / "scifact" / "corpus.jsonl.gz"
SCIFACT_MISTRAL_TOKENS = 1_985_718  # shared/reference/tokenizers.md: title + " " + text, Mistral's tokenizer
MISTRAL_7B = dict(
    hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    intermediate_size=14336, vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
    rope_theta=10000.0, hidden_act="silu", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)
LATENT = dict(num_latents_value=512, num_cross_heads=8, cross_dim_head=4096, hidden_dim=4096, latent_dim=4096)
SMOKE = dict(MISTRAL_7B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128)
SMOKE_LATENT = dict(num_latents_value=16, num_cross_heads=4, cross_dim_head=24, hidden_dim=64, latent_dim=64)


def passage_lengths(max_length: int) -> np.ndarray:
    """SciFact's documents in Mistral tokens (estimated from characters) + <s> + </s>, capped at ``max_length``."""
    with gzip.open(SCIFACT, "rt", encoding="utf-8") as handle:
        docs = [json.loads(line) for line in handle if line.strip()]
    chars = np.array([len(((d.get("title") or "") + " " + d["text"]).strip()) for d in docs], dtype=np.float64)
    tokens = np.maximum(1, np.round(chars * SCIFACT_MISTRAL_TOKENS / chars.sum())).astype(np.int64) + 2
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


def write_checkpoint_config(folder: Path, text: dict, latent: dict) -> None:
    """config.json as NV-Embed-v2 ships it (shapes only) and a three-token tokenizer (<unk>, <s>, </s>)."""
    from tokenizers import Tokenizer, models, processors

    config = {"model_type": "nvembed", "padding_side": "right", "is_mask_instruction": True,
              "latent_attention_config": {"model_type": "latent_attention", **latent},
              "text_config": {"model_type": "bidir_mistral", **text}}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}))


def random_weights(module: torch.nn.Module, folder: Path, *, dtype: torch.dtype, device: torch.device,
                   prefix: str = "") -> None:
    """Stands in for ``load_weights_strict``: every parameter drawn on the device (norm weights 1, biases 0)."""
    generator = torch.Generator(device=device).manual_seed(0)
    for name, child in module.named_modules():
        for key, param in list(child._parameters.items()):
            if param is None:
                continue
            tensor = torch.empty(param.shape, dtype=dtype, device=device)
            if "norm" in name.rsplit(".", 1)[-1] or key == "bias":
                tensor.fill_(1.0 if key == "weight" else 0.0)
            else:
                tensor.normal_(0.0, 0.02, generator=generator)
            child._parameters[key] = torch.nn.Parameter(tensor, requires_grad=False)


def useful_weights(adapter: nv_embed.NVEmbedAdapter) -> int:
    """Weights that multiply every token: the backbone's linear layers and the latent head's, minus to_kv (which
    runs on the 512 latents once per batch)."""
    return sum(m.weight.numel() for n, m in adapter.model.named_modules()
               if isinstance(m, torch.nn.Linear) and not n.endswith("to_kv"))


def build_adapter(args: argparse.Namespace, device: torch.device, folder: Path) -> nv_embed.NVEmbedAdapter:
    shipped = yaml.safe_load((ROOT / "conf" / "model" / "nv-embed-v2.yaml").read_text())
    cfg = {key: shipped[key] for key in ("max_length", "dtype", "autocast", "attn_implementation", "batch_size",
                                         "batch_tokens")}
    cfg.update(name="bench/nv-embed-v2-shape", path=str(folder), device=str(device), instructions=None)
    if args.dtype:
        cfg.update(dtype=args.dtype, autocast=None if args.dtype in ("bfloat16", "float32") else args.dtype)
    write_checkpoint_config(folder, SMOKE if args.smoke else MISTRAL_7B, SMOKE_LATENT if args.smoke else LATENT)
    real = nv_embed.load_weights_strict
    nv_embed.load_weights_strict = random_weights
    try:
        return nv_embed.NVEmbedAdapter(cfg)
    finally:
        nv_embed.load_weights_strict = real


def encode(adapter: Any, items: list[list[int]], batch_size: int, device: torch.device) -> tuple[float, Any]:
    stats = batching.BatchStats()
    real = batching.run_batches

    def counted(*a: Any, **k: Any) -> np.ndarray:
        return real(*a, **{**k, "stats": stats})

    nv_embed.run_batches = counted
    try:
        sync(device)
        start = time.perf_counter()
        vectors = adapter.embed_ids(items, 0, batch_size)
        sync(device)
        wall = time.perf_counter() - start
    finally:
        nv_embed.run_batches = real
    assert vectors.shape == (len(items), adapter.embed_dim) and np.isfinite(vectors).all()
    return wall, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-tokens", default="", help="padded tokens per batch; a comma list sweeps (default: "
                        "the config's)")
    parser.add_argument("--batch-size", type=int, default=0, help="rows per batch at most (default: the config's)")
    parser.add_argument("--max-length", type=int, default=0, help="token cap (default: the config's, 32768)")
    parser.add_argument("--dtype", default="", help="float16 (the config's, with autocast) | bfloat16 | float32")
    parser.add_argument("--docs", type=int, default=0, help="use the first N documents (0: all 5,183)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on whatever device: plumbing only")
    args = parser.parse_args()

    ctx = setup()
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("bench_gpu_encode.py needs CUDA (use --smoke for a CPU plumbing check)")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    rate = matmul_rate(device, 1024 if args.smoke else 8192, 3 if args.smoke else 20)

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        adapter = build_adapter(args, device, Path(folder))
        build_s = time.perf_counter() - start
    if args.max_length:
        adapter.max_length = args.max_length
    batch_size = args.batch_size or adapter.batch_size
    budgets = [int(b) for b in args.batch_tokens.split(",") if b] or [adapter.batch_tokens]
    lengths = passage_lengths(adapter.max_length)
    if args.docs:
        lengths = lengths[: args.docs]
    rng = np.random.default_rng(0)
    vocab = adapter.model.embedding_model.config.vocab_size
    items = [[1, *rng.integers(3, vocab, int(n) - 2).tolist(), 2] for n in lengths]
    mine = [items[i] for i in range(len(items)) if ctx.owns(i)]  # ranks take every world_size-th passage
    weights = useful_weights(adapter)
    params = sum(p.numel() for p in adapter.model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if ctx.is_main:
        print(f"device: {ctx.world_size} x {name}; torch {torch.__version__}; bf16 matmul {rate / 1e12:.1f} TFLOP/s")
        print(f"model: {params / 1e9:.3f}B parameters ({weights / 1e9:.3f}B multiply every token), "
              f"{adapter.dtype} weights, autocast {adapter.autocast}, built in {build_s:.0f} s")
        print(f"passages: {len(items):,} ({int(lengths.sum()):,} tokens, cap {adapter.max_length}); "
              f"<= {batch_size} rows per batch")

    warm = sorted(mine, key=len, reverse=True)[: max(2, batch_size // 4)]
    adapter.embed_ids(warm, 0, batch_size)  # kernels loaded, memory pool warm
    results = []
    for budget in budgets:
        adapter.batch_tokens = budget
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        wall, stats = encode(adapter, mine, batch_size, device)
        parts = ctx.all_gather({"tokens": stats.tokens, "wall": wall, "padded": stats.padded_tokens, "rate": rate,
                                "retries": stats.oom_retries, "working": stats.working_batch_size,
                                "peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0})
        tokens = sum(p["tokens"] for p in parts)
        span = max(p["wall"] for p in parts)
        ceiling = ctx.world_size * min(p["rate"] for p in parts) / (2 * weights)
        results.append((tokens / span, tokens / span / ceiling))
        if ctx.is_main:
            print(f"batch_tokens {budget}: {span:.1f} s, {tokens / span:,.0f} tokens/s "
                  f"({tokens / span / ctx.world_size:,.0f} per GPU), {tokens / span / ceiling:.1%} of the ceiling "
                  f"{ceiling:,.0f}; padding x{sum(p['padded'] for p in parts) / tokens:.2f}; out-of-memory "
                  f"retries {max(p['retries'] for p in parts)} (batch size after: "
                  f"{min(p['working'] for p in parts)}); peak GPU memory "
                  f"{max(p['peak'] for p in parts) / 2**30:.1f} GiB")
    if ctx.is_main:
        tokens_per_s, fraction = results[0]
        print(f"SUMMARY tokens_per_s={tokens_per_s:.0f} ceiling_fraction={fraction:.3f}", flush=True)


if __name__ == "__main__":
    main()
