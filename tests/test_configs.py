"""Every entry under conf/ composes with Hydra, every model's instruction family exists and parses, and every
benchmark names tasks mteb knows (or a local source)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.config import CONF_DIR, INSTRUCTIONS_DIR, group_options
from harness.models.instructions import InstructionTable
from harness.models.registry import LOADERS


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config() -> None:
    cfg = compose_with()
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg.task.name == "SciFact" and cfg.output_dir == "results"
    assert "benchmark" not in cfg or cfg.benchmark is None


@pytest.mark.parametrize("model", group_options("model"))
def test_each_model_composes_and_resolves(model: str) -> None:
    cfg = compose_with(f"model={model}")
    entry = OmegaConf.to_container(cfg.model, resolve=True)
    assert entry["name"] and entry["loader"] in LOADERS
    family = entry.get("instructions")
    if family:
        InstructionTable.load(family)


@pytest.mark.parametrize("task", group_options("task"))
def test_each_task_composes(task: str) -> None:
    cfg = compose_with(f"task={task}")
    assert cfg.task.kind in ("beir_local", "mteb")


@pytest.mark.parametrize("benchmark", group_options("benchmark"))
def test_each_benchmark_composes(benchmark: str) -> None:
    cfg = compose_with(f"benchmark={benchmark}")
    assert cfg.benchmark.tasks, f"benchmark {benchmark} lists no tasks"
    for entry in cfg.benchmark.tasks:
        assert entry.name


@pytest.mark.parametrize("family", sorted(p.stem for p in INSTRUCTIONS_DIR.glob("*.yaml")))
def test_each_instruction_file_parses(family: str) -> None:
    table = InstructionTable.load(family)
    assert table.source, f"instructions/{family}.yaml must say where its strings come from"


def test_required_benchmarks_exist() -> None:
    assert {"beir-15", "mteb-eng-v1"} <= set(group_options("benchmark"))


def test_benchmark_expands_aggregates_into_subtasks() -> None:
    from harness.evaluate import task_configs

    tasks = task_configs(compose_with("benchmark=beir-15"))
    names = [t["name"] for t in tasks]
    assert len(names) == 14 + 12 and "CQADupstackRetrieval" not in names
    assert {"CQADupstackAndroidRetrieval", "CQADupstackWordpressRetrieval", "MSMARCO"} <= set(names)
    assert next(t for t in tasks if t["name"] == "MSMARCO")["splits"] == ["dev"]
