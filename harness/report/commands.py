"""`harness report|submit|regress|compare`: argument parsing and printing, one function per command.

Owns: the command-line surface of the report package and the exit codes (0 fine; 1 the gate failed or
the submission is refused; 2 bad arguments, raised as HarnessError and printed by harness.cli).
Must not know: scoring rules, file formats or statistics; those live in aggregate, load, regress, compare.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from harness.errors import HarnessError


def _quiet_mteb() -> None:
    # mteb logs a warning per missing split/subset; our notes already say it once per model.
    logging.getLogger("mteb").setLevel(logging.ERROR)


# ---------------------------------------------------------------- report


def report_main(argv: list[str]) -> int:
    from harness.report import aggregate as agg
    from harness.report import tables
    from harness.results.load import find_all

    parser = argparse.ArgumentParser(
        prog="harness report",
        description="Benchmark table from result folders (ours, mteb's results repository, pre-1.11, "
        "external/). Earlier paths take precedence per task; within a model folder, mteb-run revisions "
        "come before external/ (model card) and no_revision_available/.",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, help="result roots, model or revision folders, task files"
    )
    parser.add_argument(
        "--benchmark",
        default="beir-15",
        help=f"conf/benchmark/<name>.yaml or a path ({', '.join(agg.list_benchmarks())})",
    )
    parser.add_argument(
        "--rule",
        choices=agg.RULES,
        default="legacy",
        help="legacy: the published leaderboard's rounding and metrics; mteb2: mteb 2's own",
    )
    parser.add_argument("--format", choices=tables.FORMATS, default="md")
    parser.add_argument("--published", action="store_true", help="add published values and differences")
    parser.add_argument("--plot", type=Path, help="also draw per-task bars to this PNG")
    parser.add_argument("--digits", type=int, default=2)
    args = parser.parse_args(argv)
    _quiet_mteb()

    bench = agg.load_benchmark(args.benchmark)
    folders = find_all(args.paths)
    if not folders:
        raise HarnessError(f"no result files under {', '.join(map(str, args.paths))}")
    scores = agg.aggregate(folders, bench, args.rule)
    published = agg.load_published(bench) if args.published else None
    if args.format == "json":
        print(tables.render_json(scores, published, args.digits))
    else:
        frame = tables.scores_frame(scores, bench, published)
        print(tables.render_table(frame, args.format, args.digits))
        foot = tables.render_footnotes(scores)
        if foot:
            print(
                ("\n" + foot) if args.format == "md" else foot,
                file=sys.stdout if args.format == "md" else sys.stderr,
            )
    if args.plot:
        from harness.report.plot import plot_task_bars

        path = plot_task_bars(scores, bench, args.plot, title=f"{bench.name} ({args.rule} rule)")
        print(f"plot: {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- submit


def submit_main(argv: list[str]) -> int:
    from harness.report.submit import write_submission

    parser = argparse.ArgumentParser(
        prog="harness submit",
        description="Write a validated leaderboard submission: mteb's results layout with model_meta.json, "
        "and the model card's model-index YAML. Nothing is written unless mteb reads it all back.",
    )
    parser.add_argument(
        "results_dir", type=Path, help="results/<org__model>/<revision>/ (or its model folder)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument(
        "--allow-unregistered",
        action="store_true",
        help="write even if mteb's model registry lacks the model (the results repo will refuse)",
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    _quiet_mteb()
    sub = write_submission(args.results_dir, args.out, args.allow_unregistered, args.force)
    print(f"{sub.model} @ {sub.revision}: {len(sub.scores)} task(s) written to {sub.out}")
    for name, score in sorted(sub.scores.items()):
        print(f"  {name:40s} {100 * score:6.2f}")
    for note in sub.notes:
        print(f"warning: {note}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- regress


def regress_main(argv: list[str]) -> int:
    from harness.report import regress

    parser = argparse.ArgumentParser(
        prog="harness regress",
        description="Compare results with expected scores (results/expected/*.yaml); OK / OKish / FAIL per "
        "row, JUnit XML, exit 1 on any FAIL or missing result.",
    )
    parser.add_argument("expected", nargs="+", type=Path, help="expected-scores YAML file(s)")
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="results root (default: results)"
    )
    parser.add_argument(
        "--run",
        action="store_true",
        help="run the reproduction command of every row without a result, then check",
    )
    parser.add_argument("--task", action="append", default=[], help="only rows of this task (repeatable)")
    parser.add_argument("--junit", type=Path, default=Path("regress-junit.xml"), help="JUnit XML output")
    args = parser.parse_args(argv)
    _quiet_mteb()

    rows = [row for path in args.expected for row in regress.load_expected(path)]
    if args.task:
        rows = [r for r in rows if r.task in set(args.task)]
        if not rows:
            raise HarnessError(f"no expected rows for task(s) {args.task}")
    verdicts = regress.check(rows, regress.results_folders(args.results))
    if args.run:
        missing = [v for v in verdicts if v.status == "MISSING"]
        failed = regress.run_commands(rows, args.results, missing)
        for command in failed:
            print(f"error: command failed: {command}", file=sys.stderr)
        verdicts = regress.check(rows, regress.results_folders(args.results))
    print(regress.render_verdicts(verdicts))
    for v in verdicts:
        for note in v.notes:
            print(f"note: {v.expectation.model}: {note}", file=sys.stderr)
    path = regress.write_junit(verdicts, args.junit, suite=", ".join(p.stem for p in args.expected))
    print(f"junit: {path}", file=sys.stderr)
    return 1 if any(v.status in regress.FAILING for v in verdicts) else 0


# ---------------------------------------------------------------- compare


def compare_main(argv: list[str]) -> int:
    from harness.report import compare
    from harness.results.load import iter_per_query_files, load_per_query

    parser = argparse.ArgumentParser(
        prog="harness compare",
        description="Paired significance per task between two runs, over their per-query scores "
        "(<run>/harness/<Task>.per_query.json). Differences are B - A.",
    )
    parser.add_argument("run_a", type=Path, help="run A: a revision folder, its harness/ folder, or one file")
    parser.add_argument("run_b", type=Path, help="run B")
    parser.add_argument("--metric", default="ndcg_at_10")
    parser.add_argument("--test", choices=compare.TESTS, default="randomization")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", action="append", default=[], help="only this task (repeatable)")
    parser.add_argument("--show-queries", type=int, default=10, help="changed queries listed per task")
    parser.add_argument("--format", choices=("md", "json"), default="md")
    args = parser.parse_args(argv)

    runs = [dict(iter_per_query_files(p)) for p in (args.run_a, args.run_b)]
    if args.run_a.is_file() and args.run_b.is_file():  # two files: paired whatever their names
        task_name = next(iter(runs[0]))
        runs = [{task_name: args.run_a}, {task_name: args.run_b}]
    common = [t for t in runs[0] if t in runs[1] and (not args.task or t in args.task)]
    if not common:
        raise HarnessError(f"no task with per-query scores in both {args.run_a} and {args.run_b}")
    results = []
    for task in common:
        a, b = load_per_query(runs[0][task]), load_per_query(runs[1][task])
        for split in [s for s in a if s in b]:
            for subset in [s for s in a[split] if s in b[split]]:
                if args.metric not in a[split][subset] or args.metric not in b[split][subset]:
                    raise HarnessError(
                        f"{runs[0][task]} / {runs[1][task]}: key '{split}.{subset}.{args.metric}' "
                        "missing in one of them"
                    )
                results.append(
                    compare.compare_task(
                        task,
                        split,
                        subset,
                        args.metric,
                        a[split][subset][args.metric],
                        b[split][subset][args.metric],
                        args.test,
                        args.resamples,
                        args.confidence,
                        args.seed,
                    )
                )
    if args.format == "json":
        print(
            json.dumps(
                {
                    f"{r.task}/{r.split}/{r.subset}": {
                        "metric": r.metric,
                        "n_queries": r.n_queries,
                        "only_a": r.only_a,
                        "only_b": r.only_b,
                        "mean_a": r.mean_a,
                        "mean_b": r.mean_b,
                        "mean_diff": r.mean_diff,
                        "p_value": r.p_value,
                        "test": r.test,
                        "exact": r.exact,
                        "ci": [r.ci_low, r.ci_high],
                        "confidence": r.confidence,
                        "per_query_diff": r.changed,
                    }
                    for r in results
                },
                indent=2,
            )
        )
        return 0
    pct = round(100 * args.confidence)
    print(
        f"B - A on {args.metric} (x100), {args.test} test, {pct}% bootstrap CI; "
        f"A = {args.run_a}, B = {args.run_b}\n"
    )
    print(f"| task | split/subset | queries | A | B | Δ | {pct}% CI | p | changed |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for r in results:
        ci = "–" if math.isnan(r.ci_low) else f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]"
        p = f"{r.p_value:.4f}" + ("" if r.exact else "~")
        print(
            f"| {r.task} | {r.split}/{r.subset} | {r.n_queries} | {100 * r.mean_a:.2f} "
            f"| {100 * r.mean_b:.2f} | {100 * r.mean_diff:+.2f} | {ci} | {p} | {len(r.changed)} |"
        )
    print("\n(~: Monte Carlo p-value; otherwise exact enumeration of sign flips)")
    for r in results:
        if r.only_a or r.only_b:
            print(
                f"warning: {r.task}: {r.only_a} queries only in A, {r.only_b} only in B (left out)",
                file=sys.stderr,
            )
        changed = sorted(r.changed.items(), key=lambda kv: -abs(kv[1]))[: args.show_queries]
        if changed:
            print(
                f"\n{r.task}: largest per-query changes (B - A): "
                + ", ".join(f"{q} {d:+.4f}" for q, d in changed)
            )
    return 0
