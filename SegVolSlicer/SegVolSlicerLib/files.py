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


def refuse_overwriting_inputs(outputs: Iterable[tuple[str, str | os.PathLike | None]], inputs: Iterable) -> None:
    """Inputs are read-only: an InputError when an output, given as (what the user calls it, e.g. "-o", path),
    is an input file, would replace one, or lies inside an input folder (a DICOM series). Symbolic links are
    followed: a link to the CT is the CT."""
    sources = [(given, Path(given).expanduser().resolve()) for given in inputs if given]
    for what, output in outputs:
        if not output:
            continue
        target = Path(output).expanduser().resolve()
        for given, source in sources:
            if target == source or (target.exists() and source.exists() and os.path.samefile(target, source)):
                raise InputError(
                    f"{what} {output} is the input {given}: inputs are never overwritten; write to another name"
                )
            if source.is_dir() and target.is_relative_to(source):
                raise InputError(
                    f"{what} {output} lies inside the input folder {given}: inputs are never written into; "
                    "write outside it"
                )


@contextmanager
def staged_outputs(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths beside each of `paths` (same name endings); every one is moved onto its path only
    when the block succeeds, in the order given, so a failure leaves none of them (the last one moved is
    the one whose presence says that all are written)."""
    finals = [Path(path).expanduser() for path in paths]
    temporaries = [path.with_name(f".{uuid.uuid4().hex[:12]}.{path.name}") for path in finals]
    try:
        yield temporaries
        for temporary, final in zip(temporaries, finals):
            os.replace(temporary, final)
    except OSError as error:
        raise InputError(f"cannot write {error.filename or ''}: {error.strerror or error}") from None
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
