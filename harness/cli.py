"""``harness run|report|submit|regress|compare``: argument handling only.

``run`` hands its arguments to Hydra (``conf/``); the others are argparse commands in ``harness.report.commands``.
"""

from __future__ import annotations

import sys

from harness.errors import HarnessError

USAGE = """usage: harness <command> [args]

commands:
  run       evaluate a model on a task or benchmark (Hydra overrides: model=X task=Y key=value; -m for multirun)
  report    leaderboard tables from result folders
  submit    write a leaderboard submission (results layout + model-index YAML), validated
  regress   compare results with expected scores; exit non-zero on regression
  compare   paired significance test between two runs

`harness <command> --help` for each.
"""

REPORT_COMMANDS = ("report", "submit", "regress", "compare")


def run_main(argv: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig

    from harness.config import CONF_DIR, register_resolvers

    register_resolvers()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _run(cfg: DictConfig) -> None:
        from harness.evaluate import run

        try:
            run(cfg)
        except HarnessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    saved = sys.argv
    sys.argv = ["harness run", *argv]
    try:
        _run()
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run_main(rest)
    if command in REPORT_COMMANDS:
        from harness.report import commands

        try:
            return int(getattr(commands, f"{command}_main")(rest))
        except HarnessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(f"harness: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
