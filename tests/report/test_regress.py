"""`harness regress`: OK / OKish / FAIL / MISSING per row, JUnit XML, exit codes."""

from __future__ import annotations

import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from harness.report.regress import ExpectedFileError, exact_half_unit, harness_command, load_expected

PROJECT = Path(__file__).resolve().parents[2]
EXPECTED = PROJECT / "results" / "expected"
MINILM_REV = "8b3219a92973c328a8e22fadcfa821b5dc75636a"


@pytest.fixture
def minilm_results(mteb_results: Path, tmp_path: Path) -> Path:
    """A results root in our layout holding the published MiniLM SciFact result."""
    root = tmp_path / "results"
    rev = root / "sentence-transformers__all-MiniLM-L6-v2" / MINILM_REV
    rev.mkdir(parents=True)
    src = mteb_results / "sentence-transformers__all-MiniLM-L6-v2" / MINILM_REV
    shutil.copy(src / "SciFact.json", rev)
    shutil.copy(src / "model_meta.json", rev)
    return root


def _junit(path: Path) -> dict[str, str]:
    """testcase name -> 'pass' or the failure type."""
    cases = ET.parse(path).getroot().iter("testcase")
    return {
        c.get("name"): (c.find("failure").get("type") if c.find("failure") is not None else "pass")
        for c in cases
    }


def _moved(tmp_path: Path, metric: str, value: float) -> Path:
    data = yaml.safe_load((EXPECTED / "all-minilm-l6-v2.yaml").read_text())
    for m in data["runs"][0]["metrics"]:
        if m["metric"] == metric:
            m["expected"] = value
    out = tmp_path / "moved.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def test_matching_results_pass(run_command, minilm_results: Path, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    rc, out = run_command(
        "regress", EXPECTED / "all-minilm-l6-v2.yaml", "--results", minilm_results, "--junit", junit
    )
    assert rc == 0
    assert "3 OK, 0 OKish, 0 FAIL, 0 MISSING" in out
    assert _junit(junit) == {
        "SciFact [test] ndcg_at_10": "pass",
        "SciFact [test] recall_at_5": "pass",
        "SciFact [test] recall_at_100": "pass",
    }


def test_moved_value_fails(run_command, minilm_results: Path, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    rc, out = run_command(
        "regress",
        _moved(tmp_path, "ndcg_at_10", 0.64508 + 0.0015),
        "--results",
        minilm_results,
        "--junit",
        junit,
    )
    assert rc == 1
    assert "1 FAIL" in out
    assert _junit(junit)["SciFact [test] ndcg_at_10"] == "FAIL"
    assert _junit(junit)["SciFact [test] recall_at_5"] == "pass"


def test_within_tolerance_is_okish(run_command, minilm_results: Path, tmp_path: Path) -> None:
    rc, out = run_command(
        "regress",
        _moved(tmp_path, "recall_at_5", 0.7375),
        "--results",
        minilm_results,
        "--junit",
        tmp_path / "j.xml",
    )
    assert rc == 0 and "2 OK, 1 OKish, 0 FAIL" in out


def test_missing_result_fails(run_command, minilm_results: Path, tmp_path: Path) -> None:
    for f in minilm_results.rglob("SciFact.json"):
        f.unlink()
    junit = tmp_path / "junit.xml"
    rc, out = run_command(
        "regress", EXPECTED / "all-minilm-l6-v2.yaml", "--results", minilm_results, "--junit", junit
    )
    assert rc == 1 and "3 MISSING" in out
    assert set(_junit(junit).values()) == {"MISSING"}
    rc, _ = run_command(
        "regress", EXPECTED / "all-minilm-l6-v2.yaml", "--results", tmp_path / "none", "--junit", junit
    )
    assert rc == 1


@pytest.mark.parametrize(
    "config,folder",
    [
        ("nv-embed-v2", "nvidia__NV-Embed-v2/external"),
        ("nv-retriever-v1", "nvidia__NV-Retriever-v1/external"),
        ("nv-embed-v1", "nvidia__NV-Embed-v1/external"),
    ],
)
def test_nv_expected_files_hold_the_published_values(
    run_command, mteb_results: Path, tmp_path: Path, config: str, folder: str
) -> None:
    """Read against the model cards they come from, every row is OK; regress checks splits strictly, so
    NV-Embed-v1's MSMARCO, which its card files under 'test', is the one missing row."""
    junit = tmp_path / "j.xml"
    rc, out = run_command(
        "regress", EXPECTED / f"{config}.yaml", "--results", mteb_results / folder, "--junit", junit
    )
    verdicts = _junit(junit)
    assert len(verdicts) == 18  # 15 nDCG@10 rows + Recall@5 on NQ, HotpotQA, FiQA2018
    if config == "nv-embed-v1":
        assert rc == 1 and {k: v for k, v in verdicts.items() if v != "pass"} == {
            "MSMARCO [dev] ndcg_at_10": "MISSING"
        }
    else:
        assert rc == 0 and "18 OK, 0 OKish, 0 FAIL, 0 MISSING" in out


def test_expected_file_schema_and_commands(tmp_path: Path) -> None:
    rows = load_expected(EXPECTED / "all-minilm-l6-v2.yaml")
    assert [(r.metric, r.expected) for r in rows] == [
        ("ndcg_at_10", 0.64508),
        ("recall_at_5", 0.73794),
        ("recall_at_100", 0.925),
    ]
    assert rows[0].command == "harness run model=all-minilm-l6-v2 task=scifact"
    assert harness_command(rows[0].command, Path("out")) == [
        sys.executable,
        "-m",
        "harness",
        "run",
        "model=all-minilm-l6-v2",
        "task=scifact",
        "output_dir=out",
    ]
    assert exact_half_unit(0.64508) == pytest.approx(5e-6) and exact_half_unit(0.925) == pytest.approx(5e-4)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x/y\nruns:\n  - task: SciFact\n    metrics:\n      - {metric: ndcg_at_10}\n")
    with pytest.raises(
        ExpectedFileError, match=r"bad\.yaml: key 'runs\[0\]\.metrics\[0\]\.expected' missing"
    ):
        load_expected(bad)
    bad.write_text(
        "model: x/y\nruns:\n  - task: SciFact\n    metrics:\n      - {metric: ndcg_at_10, expected: 64.5}\n"
    )
    with pytest.raises(ExpectedFileError, match="0-1 scale"):
        load_expected(bad)
