"""The adapters run where only torch, transformers, numpy and safetensors exist (the GPU machines): importing
and using them pulls neither mteb, hydra, omegaconf, sentence-transformers nor datasets."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.models.conftest import LLAMA_FIXTURE, NV_FIXTURE

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("mteb", "hydra", "omegaconf", "sentence_transformers", "datasets")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    from harness.models.nv_embed import NVEmbedAdapter
    from harness.models.nv_retriever import NVRetrieverAdapter
    from harness.models.llama_bidirec import LlamaEmbedAdapter, LlamaRerankAdapter
    import harness.engine.device

    nv = NVEmbedAdapter({"name": "nv", "path": sys.argv[1], "device": "cpu", "instructions": None})
    vectors = nv.embed(["hello there"], prefix="Instruct: x\\nQuery: ", role="query", batch_size=2)
    embed = LlamaEmbedAdapter({"name": "e", "path": sys.argv[2], "device": "cpu", "instructions": None})
    rerank = LlamaRerankAdapter({"name": "r", "path": sys.argv[3], "device": "cpu"})
    retriever = NVRetrieverAdapter(
        {"name": "n", "path": sys.argv[4], "device": "cpu", "instructions": None, "separator_token_id": 375}
    )
    print(vectors.shape, embed.embed(["query: a"], prefix="", role="query", batch_size=2).shape,
          rerank.score_pairs(["q"], ["p"]).shape,
          retriever.embed(["a: b"], prefix="", role="query", batch_size=2).shape)
    print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """
)


def test_adapters_import_and_run_without_mteb_hydra_omegaconf(tiny_checkpoints) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(NV_FIXTURE / "checkpoint"),
            str(LLAMA_FIXTURE / "embedder"),
            str(LLAMA_FIXTURE / "reranker"),
            str(tiny_checkpoints["nv_retriever"]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["(1, 64) (1, 64) (1,) (1, 16)", "[]"], proc.stdout
