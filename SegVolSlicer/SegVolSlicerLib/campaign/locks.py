"""One annotator per case: a lock file per open case, with its owner and a heartbeat, in the campaign's shared
folder (several annotators, several machines).

    STATE/locks/<case>.lock       {"owner", "host", "pid", "token", "acquired", "heartbeat"}

A lock is made with O_CREAT | O_EXCL, which one process alone wins. Its holder refreshes the heartbeat every
HEARTBEAT_S; a lock whose heartbeat is older than STALE_AFTER_S (its Slicer crashed, its laptop slept) is stale
and taken over with a message naming its owner. A takeover is serialized by a second O_EXCL file, so two
annotators taking over the same stale lock never both get it. Whoever writes a case first checks it still holds
its lock (`check`): a holder whose lock was taken over writes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..datasets.records import read_json, write_json
from ..errors import InputError

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats


class CaseLocked(InputError):
    """Another annotator has the case open."""


class LockLost(InputError):
    """This annotator's lock was taken over (it was stale): nothing may be written for the case."""


@dataclass(frozen=True)
class Lock:
    path: Path
    case_id: str
    owner: str
    token: str


def _age(content: dict, now: float) -> float:
    try:
        return now - float(content.get("heartbeat", 0))
    except (TypeError, ValueError):
        return float("inf")


def _describe(content: dict, now: float) -> str:
    return f"{content.get('owner', '?')} on {content.get('host', '?')}, last seen {_age(content, now):.0f} s ago"


class Locks:
    """The lock files of one campaign's state folder. `clock`: seconds (time.time; tests move it on)."""

    def __init__(self, state_dir: str | os.PathLike, clock=time.time, stale_after_s: float = STALE_AFTER_S):
        self.folder = Path(state_dir) / "locks"
        self.clock, self.stale_after_s = clock, stale_after_s

    def path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.lock"

    def holder(self, case_id: str) -> dict | None:
        """The live lock of the case (None when it is free or its lock is stale)."""
        content = read_json(self.path(case_id))
        if content is None or _age(content, self.clock()) > self.stale_after_s:
            return None
        return content

    def acquire(self, case_id: str, owner: str) -> tuple[Lock, str | None]:
        """The case's lock for `owner`, and a message when a stale lock was taken over. CaseLocked when another
        annotator holds it (the same annotator on the same machine takes its own lock back: a restarted
        Slicer)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = Lock(self.path(case_id), case_id, owner, uuid.uuid4().hex)
        if self._create(lock):
            return lock, None
        now = self.clock()
        content = read_json(lock.path) or {}
        if not content and self._young(lock.path, now):  # being written by the annotator who just made it
            raise CaseLocked(f"case {case_id} is being opened by another annotator: choose another case")
        mine = content.get("owner") == owner and content.get("host") == socket.gethostname()
        if content and not mine and _age(content, now) <= self.stale_after_s:
            raise CaseLocked(f"case {case_id} is open by {_describe(content, now)}: choose another case")
        self._take_over(lock, content)
        if mine:
            return lock, None
        return lock, f"case {case_id} was locked by {_describe(content, now)}: the stale lock was taken over"

    def _young(self, path: Path, now: float) -> bool:
        try:
            return now - path.stat().st_mtime <= self.stale_after_s
        except FileNotFoundError:
            return False

    def _content(self, lock: Lock, acquired: float | None = None) -> dict:
        now = self.clock()
        return {
            "owner": lock.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": lock.token,
            "acquired": now if acquired is None else acquired,
            "heartbeat": now,
        }

    def _create(self, lock: Lock) -> bool:
        try:
            descriptor = os.open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(self._content(lock), file)
        return True

    def _take_over(self, lock: Lock, seen: dict) -> None:
        """Replace the lock `seen` (stale, or this annotator's own) by `lock`, one taker at a time."""
        guard = lock.path.with_suffix(".takeover")
        try:
            descriptor = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not self._young(guard, self.clock()):  # a taker that died mid-takeover left it
                guard.unlink(missing_ok=True)
            raise CaseLocked(
                f"case {lock.case_id} is being taken over by another annotator: choose another case"
            ) from None
        os.close(descriptor)
        try:
            current = read_json(lock.path) or {}
            if current.get("token") != seen.get("token"):  # someone else got there in between
                raise CaseLocked(f"case {lock.case_id} was just opened by {current.get('owner', '?')}")
            write_json(lock.path, self._content(lock))
        finally:
            guard.unlink(missing_ok=True)

    def check(self, lock: Lock) -> None:
        """LockLost unless `lock` still holds its case."""
        content = read_json(lock.path) or {}
        if content.get("token") != lock.token:
            taker = f" by {content.get('owner')}" if content.get("owner") else ""
            raise LockLost(
                f"case {lock.case_id} was taken over{taker} while it was idle here: nothing was written "
                "(open the case again to continue)"
            )

    def heartbeat(self, lock: Lock) -> None:
        """Refresh the heartbeat (LockLost when the lock was taken over meanwhile)."""
        self.check(lock)
        content = read_json(lock.path) or {}
        write_json(lock.path, self._content(lock, acquired=content.get("acquired")))

    def release(self, lock: Lock) -> None:
        """Drop the lock if it is still ours (a taken-over lock belongs to its taker)."""
        content = read_json(lock.path) or {}
        if content.get("token") == lock.token:
            lock.path.unlink(missing_ok=True)
