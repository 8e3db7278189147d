"""Run every golden-fixture case of the NVIDIA adapters on CUDA, in float32 and in the 16-bit modes the
configs use, and print the max abs error of each against the original code's outputs (computed on CPU in
float32).

    python benchmarks/gpu_fixture_check.py [--shared ../shared] [--device cuda]

Needs only torch, transformers, numpy, safetensors and this repository (no mteb, hydra or omegaconf): the
adapters are built directly from dict configs. Modes:
* ``fp32``: float32 weights, no autocast, TF32 off. Target: <= 1e-5 (as on CPU).
* NV-Embed ``fp32+autocast16``: float32 weights under ``torch.autocast("cuda", float16)``, exactly what
  NVIDIA's code did on a GPU; ``fp16+autocast16``: float16 weights + autocast (the nv-embed-v*.yaml CUDA
  default, half the memory).
* llama ``bf16``: bfloat16 weights (the nv-embedqa / nv-rerankqa CUDA default); ``fp16`` for comparison.
16-bit targets (unit-norm embeddings of a 64-dim random model; raw logits for the reranker): fp16 <= 5e-3,
bf16 <= 3e-2. The last line is ``SUMMARY ...`` with the worst error per mode and PASS/FAIL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.models.llama_bidirec import LlamaEmbedAdapter, LlamaRerankAdapter  # noqa: E402
from harness.models.nv_embed import NVEmbedAdapter  # noqa: E402

TARGETS = {"fp32": 1e-5, "fp32+autocast16": 5e-3, "fp16+autocast16": 5e-3, "fp16": 5e-3, "bf16": 3e-2}
NV_MODES = {
    "fp32": {"dtype": "float32", "autocast": None},
    "fp32+autocast16": {"dtype": "float32", "autocast": "float16"},
    "fp16+autocast16": {"dtype": "float16", "autocast": "float16"},
}
LLAMA_MODES = {
    "fp32": {"dtype": "float32", "autocast": None},
    "bf16": {"dtype": "bfloat16", "autocast": None},
    "fp16": {"dtype": "float16", "autocast": None},
}


def find_shared(arg: str | None) -> Path:
    for candidate in ([Path(arg)] if arg else []) + [ROOT.parent / "shared", ROOT / "shared"]:
        if (candidate / "fixtures").is_dir():
            return candidate
    raise SystemExit("no shared/fixtures folder found; pass --shared DIR")


def load_case(folder: Path, case: str) -> dict[str, np.ndarray]:
    with np.load(folder / f"{case}.npz") as data:
        return {k: data[k] for k in data.files}


def nv_embed_errors(fixtures: Path, device: str, mode: dict) -> dict[str, float]:
    folder = fixtures / "nv_embed_tiny"
    cases = json.loads((folder / "cases.json").read_text())["cases"]
    cfg = {"name": "nv", "path": str(folder / "checkpoint"), "device": device, "instructions": None, **mode}
    adapter = NVEmbedAdapter(cfg)
    errors = {}
    for case, spec in cases.items():
        adapter.max_length = spec["max_length"]
        got = adapter.embed(spec["texts"], prefix=spec["instruction"], role="query", batch_size=8)
        errors[case] = float(np.abs(got - load_case(folder, case)["embeddings"]).max())
    return errors


def llama_errors(fixtures: Path, device: str, mode: dict) -> dict[str, float]:
    folder = fixtures / "llama_bidirec_tiny"
    cases = json.loads((folder / "cases.json").read_text())["cases"]
    embedder = LlamaEmbedAdapter(
        {"name": "e", "path": str(folder / "embedder"), "device": device, "instructions": None, **mode}
    )
    reranker = LlamaRerankAdapter({"name": "r", "path": str(folder / "reranker"), "device": device, **mode})
    errors = {}
    for case, spec in cases.items():
        expected = load_case(folder, case)
        if case.startswith("embed_"):
            embedder.max_length = spec["max_length"]
            got = embedder.embed(spec["texts"], prefix="", role="query", batch_size=8)
            errors[case] = float(np.abs(got - expected["embeddings"]).max())
        else:
            got = reranker.score_pairs([spec["query"]] * len(spec["documents"]), spec["documents"])
            errors[case] = float(np.abs(got - expected["logits"][:, 0]).max())
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=None, help="the shared/ folder (default: beside the repository)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    fixtures = find_shared(args.shared) / "fixtures"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 must mean fp32
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}")
    worst: dict[str, float] = {}
    for model, run, modes in (
        ("nv_embed", nv_embed_errors, NV_MODES),
        ("llama_bidirec", llama_errors, LLAMA_MODES),
    ):
        for mode_name, mode in modes.items():
            start = time.perf_counter()
            errors = run(fixtures, args.device, mode)
            elapsed = time.perf_counter() - start
            key = f"{model}:{mode_name}"
            worst[key] = max(errors.values())
            verdict = "PASS" if worst[key] <= TARGETS[mode_name] else "FAIL"
            cases = " ".join(f"{case}={err:.2e}" for case, err in errors.items())
            target = TARGETS[mode_name]
            print(f"{key:32s} max {worst[key]:.3e} (target {target:.0e}) {verdict} [{elapsed:.1f}s] {cases}")
    failed = [k for k, v in worst.items() if v > TARGETS[k.split(":")[1]]]
    summary = " ".join(f"{k}={v:.2e}" for k, v in worst.items())
    print(f"SUMMARY {'PASS' if not failed else 'FAIL ' + ','.join(failed)} {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
