"""Files written safely: atomically (a temporary name beside the target, renamed into place, so a failed or
interrupted run never leaves a partial file), CSV tables, and file digests."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` (same name ending, so writers pick the same format) and moves
    it onto `path` only if the block succeeds."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"cannot write {path}: folder {path.parent} is not writable")
    tmp = path.with_name(f".{uuid.uuid4().hex[:12]}.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_table(path: str | os.PathLike, fields: Sequence[str], rows: Iterable[dict]) -> None:
    """A CSV table (UTF-8, a header row of `fields`; other keys of the rows left out), atomically."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path) as tmp:
        tmp.write_text(table.getvalue(), encoding="utf-8")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 16 MB blocks (weights files are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()
