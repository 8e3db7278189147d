"""The one place that resolves which instruction a model sees for a task and a side.

An instruction file ``instructions/<family>.yaml`` holds bare task instructions as the model family was trained and
evaluated with, plus the family's template that turns an instruction into the text prefix:

    source: where the strings come from
    template: {query: "Instruct: {instruction}\\nQuery: ", document: ...}  # null: the family takes no instructions
    prefix: {query: "query: ", document: "passage: "}   # fixed prefix for a side that has no instruction
    default: {query: ..., document: ...}                # unlisted tasks (optional)
    by_type: {STS: {query: ..., document: ...}}         # by mteb task type (optional)
    tasks: {SciFact: {query: ...}, "CQADupstack*Retrieval": {query: ...}}

Resolution for (task, type, side): ``tasks`` (exact name, then glob) > ``by_type`` > ``default`` > none. A side
missing from a matched entry means "no instruction on that side" (explicit, not a fall-through). Knows nothing of
tokenisation: adapters that mask the instruction (NV-Embed) get the prefix string and do their own counting.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError

ROLES = ("query", "document")


def _check_sides(where: str, entry: Any) -> dict[str, str | None]:
    if entry is None:
        return {}
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys query/document, got {type(entry).__name__}")
    unknown = set(entry) - set(ROLES) - {"source", "note"}
    if unknown:
        raise ConfigError(f"{where}: unknown side(s) {sorted(unknown)}; sides are query and document")
    return {k: entry[k] for k in ROLES if k in entry}


@dataclass
class InstructionTable:
    """A family's instructions and template, loaded from one YAML file (or empty)."""

    family: str | None = None
    source: str = ""
    template: dict[str, str] | None = None
    prefix: dict[str, str] = field(default_factory=dict)
    default: dict[str, str | None] = field(default_factory=dict)
    by_type: dict[str, dict[str, str | None]] = field(default_factory=dict)
    tasks: dict[str, dict[str, str | None]] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, family: str | None, folder: Path | None = None) -> InstructionTable:
        if not family:
            return cls()
        if folder is None:
            from harness.config import INSTRUCTIONS_DIR  # omegaconf: only when the project's folder is wanted

            folder = INSTRUCTIONS_DIR
        path = folder / f"{family}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
            raise ConfigError(f"instructions={family!r}: no file {path}. Known families: {known}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, family=family, path=path)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], family: str | None = None, path: Path | None = None
    ) -> InstructionTable:
        where = str(path or family or "<instructions>")
        allowed = {"source", "template", "prefix", "default", "by_type", "tasks", "notes", "family"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        template = data.get("template")
        if template is not None:
            template = {k: v for k, v in _check_sides(f"{where}: template", template).items() if v is not None}
            for side, text in template.items():
                if "{instruction}" not in text:
                    raise ConfigError(f"{where}: template.{side} must contain '{{instruction}}', got {text!r}")
        tasks = {str(k): _check_sides(f"{where}: tasks.{k}", v) for k, v in (data.get("tasks") or {}).items()}
        by_type = {str(k): _check_sides(f"{where}: by_type.{k}", v) for k, v in (data.get("by_type") or {}).items()}
        prefix = {k: v for k, v in _check_sides(f"{where}: prefix", data.get("prefix")).items() if v}
        return cls(
            family=family,
            source=str(data.get("source", "")),
            template=template,
            prefix=prefix,
            default=_check_sides(f"{where}: default", data.get("default")),
            by_type=by_type,
            tasks=tasks,
            path=path,
        )

    def instruction(self, role: str, task: str | None = None, task_type: str | None = None) -> str | None:
        """The bare instruction for a side of a task, or None."""
        _check_role(role)
        if task is not None:
            entry = self.tasks.get(task)
            if entry is None:
                entry = next((v for k, v in self.tasks.items() if fnmatch.fnmatchcase(task, k)), None)
            if entry is not None:
                return entry.get(role)
        if task_type is not None and task_type in self.by_type:
            return self.by_type[task_type].get(role)
        return self.default.get(role)

    def prefix_for(
        self, role: str, task: str | None = None, task_type: str | None = None, instruction: str | None = None
    ) -> str:
        """The text prefix for a side: the template around the instruction, or the side's fixed prefix.

        ``instruction`` overrides the file: a bare instruction wrapped in the template, ``""`` for none.
        """
        _check_role(role)
        if instruction is None:
            instruction = self.instruction(role, task, task_type)
        if not instruction:
            return self.prefix.get(role, "")
        if self.template is None or role not in self.template:
            raise ConfigError(
                f"{self.path or self.family}: this model family takes no instruction on the {role} side "
                f"(no template.{role}); got instruction {instruction!r}"
            )
        return self.template[role].format(instruction=instruction)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
