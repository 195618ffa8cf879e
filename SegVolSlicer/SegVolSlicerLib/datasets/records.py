"""What a run knows about its cases: a record per case, written atomically by whoever computed it, and the job
fingerprint that says which job made it.

    OUT/.segvol/records/<id>.json   status, seconds, warnings, error, fingerprint, outputs {name: sha256, size}
    OUT/.segvol/jobs/<fp>.json      what the job with fingerprint <fp> was (to say how another job differs)
    OUT/.segvol/staging/<id>/       a case's outputs while it is computed

A case commits in this order: its outputs complete in its staging folder, then its record (the commit point),
then the outputs renamed onto their final names. A kill before the record leaves the case undone (its staging
folder is cleared on the rerun); a kill after it leaves a done case whose renames the rerun finishes. So no
complete case is computed twice, and no partial file is ever under a final name. results.csv is rebuilt from
the records.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..files import atomic_output, file_sha256, write_table

STATE_DIR = ".segvol"
RESULT_FIELDS = ("id", "image", "status", "seconds", "warnings", "error", "fingerprint")


def fingerprint_of(description: dict) -> str:
    """A short hash of a job's description (canonical JSON)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1, sort_keys=True), encoding="utf-8")


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when there is none (or it is unreadable: then it counts as absent)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return content if isinstance(content, dict) else None


class CheckpointHashes:
    """sha256 of weights files, cached by path, size and modification time (hashing 1.5 GB takes seconds)."""

    def __init__(self, cache: Path):
        self.cache = cache

    def of(self, path: Path) -> str:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        known = read_json(self.cache) or {}
        if key not in known:
            known[key] = file_sha256(path)
            write_json(self.cache, known)
        return known[key]


@dataclass(frozen=True)
class Outcome:
    """Where a recorded case stands for the job at hand."""

    done: bool
    other_job: bool = False  # recorded ok by a job with another fingerprint
    why: str = ""  # why a case recorded ok is computed again (its outputs changed)


class Records:
    """The records of one output folder."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.state = self.output_dir / STATE_DIR

    def record_path(self, case_id: str) -> Path:
        return self.state / "records" / f"{case_id}.json"

    def staging_dir(self, case_id: str) -> Path:
        return self.state / "staging" / case_id

    def read(self, case_id: str) -> dict | None:
        return read_json(self.record_path(case_id))

    def all(self) -> dict[str, dict]:
        folder = self.state / "records"
        if not folder.is_dir():
            return {}
        records = (read_json(path) for path in sorted(folder.glob("*.json")))
        return {record["id"]: record for record in records if record and record.get("id")}

    def describe_job(self, fingerprint: str, description: dict) -> None:
        path = self.state / "jobs" / f"{fingerprint}.json"
        if not path.is_file():
            write_json(path, description)

    def job_description(self, fingerprint: str) -> dict | None:
        return read_json(self.state / "jobs" / f"{fingerprint}.json")

    def start(self, case_id: str) -> Path:
        """An empty staging folder for the case's outputs (what a killed attempt left is cleared)."""
        staging = self.staging_dir(case_id)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def commit(self, record: dict) -> dict:
        """Checksums the staged outputs, writes the record (the commit point), then renames the outputs onto
        their final names. A failed case has no outputs: its record alone is written."""
        staging = self.staging_dir(record["id"])
        outputs = {}
        if record["status"] == "ok":
            for path in sorted(p for p in staging.rglob("*") if p.is_file() and not p.name.startswith(".")):
                name = path.relative_to(staging).as_posix()
                outputs[name] = {"sha256": file_sha256(path), "size": path.stat().st_size}
        record = {**record, "outputs": outputs}
        write_json(self.record_path(record["id"]), record)
        self.finish(record)
        return record

    def finish(self, record: dict) -> None:
        """Moves the staged outputs of a committed record onto their final names (again after a kill)."""
        staging = self.staging_dir(record["id"])
        for name in record.get("outputs", {}):
            staged = staging / name
            if staged.is_file():
                final = self.output_dir / name
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
        shutil.rmtree(staging, ignore_errors=True)

    def outcome(self, case_id: str, fingerprint: str) -> Outcome:
        record = self.read(case_id)
        if record is None or record.get("status") != "ok":
            return Outcome(False)
        if record.get("fingerprint") != fingerprint:
            return Outcome(False, other_job=True)
        self.finish(record)
        for name, expected in record.get("outputs", {}).items():
            path = self.output_dir / name
            if not path.is_file():
                return Outcome(False, why=f"{name} is missing")
            if path.stat().st_size != expected["size"] or file_sha256(path) != expected["sha256"]:
                return Outcome(False, why=f"{name} changed since it was written (truncated or edited)")
        return Outcome(True)

    def write_results(self, order: Iterable[str]) -> None:
        """OUT/results.csv from the records: the cases of `order` first, then others recorded earlier."""
        records = self.all()
        order = [case_id for case_id in order if case_id in records]
        rows = [records[i] for i in order] + [r for i, r in records.items() if i not in set(order)]
        write_table(self.output_dir / "results.csv", RESULT_FIELDS, rows)


def differences(old: dict | None, new: dict) -> str:
    """How job description `new` differs from `old`, e.g. "texts ['liver'] -> ['spleen']"."""
    if old is None:
        return "its settings were not kept"
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key))


def refuse_other_job(output_dir: Path, other: list[str], old: dict | None, new: dict) -> InputError:
    shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
    return InputError(
        f"{output_dir} holds {len(other)} case(s) done by another job ({shown}; {differences(old, new)}): "
        "give a new --output-dir, or add --redo to recompute the cases whose job differs"
    )
