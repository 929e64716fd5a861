"""The statement journal: each statement on disk before the ledger has it, so a crash loses none.

The statement log (``audit.statements``) keeps what channels relayed in memory until its writer
has it in the ledger, about a second later (longer while the database is down). A broker process
that dies in between (SIGKILL, the OOM killer, a segfault in a C library) would lose that. So
every ``add`` is also appended to this process's journal, a file in ``DATA_DIR/statements/``
(mode 0600 in a 0700 folder), and the writer notes there what it has written. The next process
on the same data folder replays the journals whose owner is gone (``recover``) into its own log
before they are deleted: nothing the dead process relayed is dropped, and nothing it wrote is
written twice.

Records are JSON lines, as ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` writes
them (the ``S`` lines built by the statement log's compiled side, ``audit.turn``, from quoted
strings; a line torn by the crash is ignored)::

    ["S", connection, grant, service, actor, first, at_us, [[kind, text, name], ...]]
    ["W", connection, next_n]        # the writer: statements before next_n are in the ledger

The journal survives the death of the process, not of the machine: it is written to the page
cache (no fsync per statement: that would cost more than the relay), so a power loss or kernel
crash loses at most what the kernel had not flushed. Each file is mapped into memory (shared, so
what is stored there is in the page cache at once and outlives the process as a ``write`` would),
its ``ROTATE_BYTES`` and some room allocated on disk first (``posix_fallocate``: a full disk is
an error then, never a fault on a store): appending a loop turn's lines is a copy, not a system
call (which also handed the GIL to the writer thread on every turn). A file is cut to what was
written when it is rotated or closed; one whose process died still has its allocated tail of
zero bytes, which reads as a torn last line. Where the file cannot be mapped (a filesystem
without ``mmap`` or ``fallocate``), lines are written with ``pwrite`` as before.

Each live journal is held with ``flock``, rotated ones too until deleted, so a file nobody holds
is a dead process's (whatever its pid, which a container gives again): two processes on one data
folder never replay each other's. Rotation keeps the files small: past ``ROTATE_BYTES`` the next
write opens a new file, and an old one is deleted once the writer has everything it held in the
ledger. A write that fails (disk full, I/O error) raises
``JournalError``: the log then refuses statements, and channels stop (fail closed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import mmap
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ROTATE_BYTES", "Journal", "JournalError", "Recovered", "recover", "release"]

log = logging.getLogger(__name__)

ROTATE_BYTES = 8 * 1024 * 1024
ROOM = 256 * 1024  # mapped past ROTATE_BYTES: the last turn's lines and the writer's marks (past it: pwrite)
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class JournalError(Exception):
    """The journal could not be written: statements cannot be kept safe now."""


class Journal:
    """This process's journal files: one open for appending, older ones until written."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.generation = 0
        self.size = 0
        self._fd: int | None = None
        self._map: mmap.mmap | None = None  # the open file, mapped (None: lines go by pwrite)
        self._files: dict[int, tuple[Path, int]] = {}  # generation -> its file and locked fd, until deleted
        self._lock = threading.Lock()  # the writer's marks and the loop's writes and rotations

    @property
    def paths(self) -> list[Path]:
        return [path for path, _fd in self._files.values()]

    def _open(self) -> None:
        self._retire()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.generation += 1
            path = self.directory / f"{os.getpid()}-{secrets.token_hex(6)}-{self.generation}.journal"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot create a statement journal in {self.directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._map = _mapped(fd, ROTATE_BYTES + ROOM)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise JournalError(f"cannot create a statement journal in {self.directory}: {exc}") from exc
        self._fd = fd  # a rotated file's fd stays open, and locked, until ``drop``
        self._files[self.generation] = (path, fd)
        self.size = 0

    def _retire(self) -> None:
        """The open file takes no more lines: unmapped, cut to what was written (best effort:
        a tail of zero bytes left behind reads as a torn line)."""
        mapped, self._map = self._map, None
        if mapped is not None:
            mapped.close()
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)

    def _write(self, data: bytes) -> None:
        """``data`` at the end of the open file (under the lock)."""
        assert self._fd is not None
        end = self.size + len(data)
        mapped = self._map
        if mapped is not None and end <= len(mapped):
            mapped[self.size : end] = data
        elif os.pwrite(self._fd, data, self.size) != len(data):
            raise OSError(errno.ENOSPC, "a short write (is the disk full?)")
        self.size = end

    def append(self, lines: str) -> int:
        """Write ``lines`` (``S`` records, each ending in a newline); returns the generation
        they are in.

        Raises:
            JournalError: the write failed.
        """
        data = lines.encode("utf-8", "surrogatepass")
        with self._lock:
            if self._fd is None or self.size >= ROTATE_BYTES:
                self._open()
            start = self.size
            end = start + len(data)
            mapped = self._map
            if mapped is not None and end <= len(mapped):  # ``_write``, inlined: once per loop turn
                mapped[start:end] = data
                self.size = end
                return self.generation
            try:
                self._write(data)
            except OSError as exc:
                raise JournalError(f"cannot write the statement journal: {exc}") from exc
            return self.generation

    def note_written(self, marks: list[tuple[str, int]]) -> None:
        """The writer: these connections' statements before ``next_n`` are in the ledger
        (best effort: a lost mark costs a duplicate batch at recovery, which readers show once)."""
        if not marks:
            return
        data = "".join([_encode(["W", connection, n]) + "\n" for connection, n in marks]).encode()
        with self._lock, contextlib.suppress(OSError):
            if self._fd is not None:
                self._write(data)

    def drop(self, generation: int) -> None:
        """Delete a rotated file whose statements are all in the ledger."""
        with self._lock:
            if generation == self.generation and self._fd is not None:
                return  # the open one stays
            found = self._files.pop(generation, None)
        if found is not None:
            path, fd = found
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)

    def close(self, *, delete: bool) -> None:
        """On a stop: close the open file; ``delete`` once everything is in the ledger."""
        with self._lock:
            self._retire()
            self._fd = None
            files, self._files = self._files, {}
        for path, fd in files.values():
            if delete:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            os.close(fd)


def _mapped(fd: int, size: int) -> mmap.mmap | None:
    """``size`` bytes of the new file ``fd`` allocated on disk and mapped (shared); None where
    this filesystem cannot (then lines go by ``pwrite``).

    Raises:
        OSError: the disk has no room (or the quota is used up).
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        return None  # no fallocate here: a mapping could fault (SIGBUS) on a full disk
    try:
        return mmap.mmap(fd, size)
    except OSError:
        os.ftruncate(fd, 0)
        return None


@dataclass(slots=True)
class Recovered:
    """One connection's statements from dead processes' journals, not yet in the ledger."""

    connection: str
    grant: str
    service: str
    actor: str
    first: int  # the number of statements[0]
    at_us: list[int]
    statements: list[list[Any]]  # [kind, text, name]


def _records(path: Path) -> Iterator[list[Any]]:
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return  # torn by the crash
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("a damaged line in the statement journal %s was skipped", path.name)
                continue
            if isinstance(record, list) and record:
                yield record


def recover(directory: Path) -> tuple[list[Recovered], list[tuple[Path, int]]]:
    """The statements of dead processes' journals in ``directory`` that their writer had not
    noted as written, per connection in order; and the files read (to delete once written).

    A file another process holds (its flock) is a live one's and left alone; the files read stay
    locked by the returned descriptors until ``release``d (deleted once their statements are in
    the ledger), so no third process replays them meanwhile.
    """
    if not directory.is_dir():
        return [], []
    found: dict[str, Recovered] = {}
    marks: dict[str, int] = {}
    held: list[tuple[Path, int]] = []
    for path in sorted(directory.glob("*.journal"), key=_order):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live process's journal
        held.append((path, fd))
        for record in _records(path):
            _take(record, found, marks)
    recovered: list[Recovered] = []
    for connection, item in found.items():
        skip = max(0, marks.get(connection, 0) - item.first)
        if skip >= len(item.statements):
            continue
        item.first += skip
        item.at_us = item.at_us[skip:]
        item.statements = item.statements[skip:]
        recovered.append(item)
    return recovered, held


def release(held: list[tuple[Path, int]], *, delete: bool) -> None:
    """Let go of recovered files: deleted (their statements are in the ledger) or not."""
    for path, fd in held:
        if delete:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(fd)


def _order(path: Path) -> tuple[str, int]:
    stem = path.stem.rsplit("-", 1)
    return stem[0], int(stem[1]) if len(stem) == 2 and stem[1].isdigit() else 0


def _take(record: list[Any], found: dict[str, Recovered], marks: dict[str, int]) -> None:
    try:
        if record[0] == "W":
            _, connection, upto = record
            marks[connection] = max(marks.get(connection, 0), int(upto))
        elif record[0] == "S":
            _, connection, grant, service, actor, first, at_us, statements = record
            item = found.get(connection)
            if item is None:
                item = found[connection] = Recovered(connection, grant, service, actor, int(first), [], [])
            if int(first) != item.first + len(item.statements):
                # Appends are whole records in order: only a damaged file gets here.
                log.warning("a statement journal record out of order was skipped (%s)", connection)
                return
            item.at_us.extend([int(at_us)] * len(statements))
            item.statements.extend(statements)
    except (ValueError, TypeError):
        log.warning("a malformed record in a statement journal was skipped")
