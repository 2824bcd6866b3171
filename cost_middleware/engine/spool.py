"""The disk spool: records wait here while the database is down, then are replayed.

Each process appends to a file of its own (creation time, pid and a random part in the
name), one fsync per batch, and holds an exclusive ``flock`` on it while it may still append.
A file nobody holds is replayable: it was sealed by its owner, or its owner died (the kernel
drops the lock). A replayer takes the lock first, so two processes never replay the same
file, and files are replayed oldest first.

File layout (text, one line each)::

    COST-MIDDLEWARE-SPOOL 1 0000000000000412     magic, version, replay offset (bytes)
    {"record": [...], "usage": [...]}            field names the lines below follow
    ["0193...", "2025-01-01T00:00:00+00:00", ...]  one JSON array per record

The offset is rewritten in place after each replayed chunk, so a replay interrupted by a
crash or a database failure resumes where it stopped; at worst one chunk is sent twice, and
the sink ignores records it already holds. A line that does not parse (a torn write at the
end of a crashed process's file) is counted as ``spool.corrupt`` and skipped.

Values come back exactly: ``Decimal`` digits, datetimes to the microsecond (aware ones as
UTC), ``None`` apart from 0, integers of any size. Only what JSON cannot hold changes: a
non-finite float becomes null, text with unpaired surrogates gets "?" as in storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import secrets
import threading
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import Any

import orjson

from cost_middleware import forks
from cost_middleware.metrics import Metrics
from cost_middleware.records import CostRecord
from cost_middleware.usage.model import Usage

log = logging.getLogger("cost_middleware")


class Writer(typing.Protocol):
    """What a replay sends records to (a sink, or the worker's ReplaySink around one)."""

    def write(self, records: Sequence[CostRecord]) -> int:
        """Store ``records``; return how many count as stored now. Raises on failure."""
        ...


MAGIC = b"COST-MIDDLEWARE-SPOOL 1 "
_OFFSET_WIDTH = 16
#: A file is sealed and a new one started past this size, so replays can delete progress.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Records per ``sink.write`` during a replay.
REPLAY_CHUNK = 5_000
_NAME = re.compile(r"^(\d{20})-(\d+)-([0-9a-f]{8})\.spool$")
#: A ``.tmp`` file (a crash between creating and naming a file) older than this is removed.
_STALE_TMP_SECONDS = 60.0


class SpoolError(Exception):
    """The spool could not store records (the disk failed); they are lost."""


class _SinkFailed(Exception):
    """A sink failure during a replay, told apart from the spool's own disk errors (the
    caller backs off for the former; the latter only skip a file)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    files: int
    #: Records not yet replayed (lines, including any corrupt ones).
    records: int
    #: Bytes of spool files on disk.
    bytes: int
    #: Creation time of the oldest file.
    oldest: datetime | None
    #: (pid, records) of the files live processes hold (with ``status(holders=True)``): only
    #: that process replays them, or any process once it has exited.
    held: tuple[tuple[int, int], ...] = ()


# -- encoding ------------------------------------------------------------------------------


def _field_kinds(cls: type[Any]) -> tuple[dict[str, Callable[[Any], Any]], frozenset[str]]:
    """The fields of ``cls`` whose JSON value must be turned back into their type (Decimal
    from text, datetime from ISO 8601), and its integer fields (an integer beyond 64 bits is
    written as text)."""
    hints = typing.get_type_hints(cls)
    converters: dict[str, Callable[[Any], Any]] = {}
    ints = set()
    for f in dataclasses.fields(cls):
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        if Decimal in kinds:
            converters[f.name] = Decimal
        elif datetime in kinds:
            converters[f.name] = _to_datetime
        elif int in kinds:
            ints.add(f.name)
    return converters, frozenset(ints)


_to_datetime = datetime.fromisoformat
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(CostRecord))
_USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))
_USAGE_AT = _RECORD_FIELDS.index("usage")
_record_values = attrgetter(*_RECORD_FIELDS)
_usage_values = attrgetter(*_USAGE_FIELDS)
_RECORD_KINDS = _field_kinds(CostRecord)
_USAGE_KINDS = _field_kinds(Usage)
_SCHEMA_LINE = orjson.dumps({"record": _RECORD_FIELDS, "usage": _USAGE_FIELDS},
                            option=orjson.OPT_APPEND_NEWLINE)
_DATETIMES_AT = tuple(i for i, name in enumerate(_RECORD_FIELDS)
                      if _RECORD_KINDS[0].get(name) is _to_datetime)
_INT64 = range(-(2**63), 2**64)  # what orjson writes as a JSON integer


def encode(record: CostRecord) -> bytes:
    """One spool line: the record's fields in ``_RECORD_FIELDS`` order, exact."""
    values = list(_record_values(record))
    if record.usage is not None:
        values[_USAGE_AT] = _usage_values(record.usage)
    for i in _DATETIMES_AT:
        # As UTC: ISO 8601 offsets have no seconds, which historical zones need.
        moment = values[i]
        if isinstance(moment, datetime) and moment.tzinfo not in (None, UTC):
            values[i] = moment.astimezone(UTC)
    try:
        # Decimal (and any other non-JSON type) goes through str(): exact for Decimal.
        return orjson.dumps(values, default=str, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return orjson.dumps([_portable(v) for v in values], default=str,
                            option=orjson.OPT_APPEND_NEWLINE)


def _portable(value: Any) -> Any:
    """What orjson refuses: integers beyond 64 bits (kept exact, as text) and text with
    unpaired surrogates (not Unicode, and unstorable anyway: replaced as storage does)."""
    if type(value) is int and value not in _INT64:
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, tuple):
        return [_portable(v) for v in value]
    return value


class _Fields:
    """Turns one dataclass's JSON array, in the field order a file names, back into keyword
    arguments (fields a newer version wrote are dropped; missing ones take defaults)."""

    def __init__(self, names: list[str], cls: type[Any],
                 kinds: tuple[dict[str, Callable[[Any], Any]], frozenset[str]]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        converters, ints = kinds
        self._names = names
        self._extra = [n for n in names if n not in known]
        self._convert = [(n, c) for n, c in converters.items() if n in names]
        self._ints = [n for n in names if n in ints]

    def build(self, values: list[Any]) -> dict[str, Any]:
        if len(values) != len(self._names):
            raise ValueError("wrong number of fields")
        fields = dict(zip(self._names, values, strict=True))
        for name in self._extra:
            del fields[name]
        for name, convert in self._convert:
            if (value := fields[name]) is not None:
                fields[name] = convert(value)
        if self._ints and str in map(type, values):
            for name in self._ints:
                if type(value := fields[name]) is str:
                    fields[name] = int(value)
        return fields


class _Decoder:
    """Turns the lines of one file back into records, by the field names in its header."""

    def __init__(self, schema_line: bytes) -> None:
        schema = orjson.loads(schema_line)
        self._record = _Fields(list(schema["record"]), CostRecord, _RECORD_KINDS)
        self._usage = _Fields(list(schema["usage"]), Usage, _USAGE_KINDS)

    def decode(self, line: bytes) -> CostRecord | None:
        """The record of one line, or None when the line is corrupt."""
        try:
            values = orjson.loads(line)
            if type(values) is not list:
                return None
            fields = self._record.build(values)
            raw = fields["usage"]
            if raw is not None:
                if type(raw) is not list:
                    return None
                fields["usage"] = Usage(**self._usage.build(raw))
            return CostRecord(**fields)
        except (ValueError, TypeError, IndexError, KeyError, ArithmeticError):
            return None


_HEADER_SIZE = len(MAGIC) + _OFFSET_WIDTH + 1 + len(_SCHEMA_LINE)


def _header(offset: int) -> bytes:
    return MAGIC + b"%0*d\n" % (_OFFSET_WIDTH, offset)


# -- the spool -----------------------------------------------------------------------------


class Spool:
    """Append-only files of records waiting for the database; see the module docstring."""

    def __init__(self, directory: str, metrics: Metrics | None = None) -> None:
        self.directory = Path(directory)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._fd: int | None = None  # our file, flock'ed while we may append to it
        self._size = 0
        #: Every descriptor this process holds on spool files: a forked child closes its
        #: copies (without unlocking, which would unlock the parent's too).
        self._open_fds: set[int] = set()
        forks.reset_in_child(self, Spool._after_fork)

    def append(self, records: Sequence[CostRecord]) -> None:
        """Write ``records`` to disk and fsync. Raises :class:`SpoolError` when that fails."""
        if not records:
            return
        data = b"".join([encode(record) for record in records])
        with self._lock:
            try:
                self._append(data)
            except OSError as error:
                raise SpoolError(f"cannot spool {len(records)} record(s) in "
                                 f"{str(self.directory)!r}: {error}") from error
        if self._metrics is not None:
            self._metrics.incr("records.spooled", len(records))
        self._report_bytes()

    def replay(self, sink: Writer, *, max_records: int | None = None) -> int:
        """Send spooled records to ``sink``, oldest file first; return how many were sent.

        Files another live process holds are skipped. Our own file is sealed and replayed
        once every older file went through (sealing it sooner, while the database is still
        down, would only start a new file at each attempt). A sink failure propagates;
        progress up to the last written chunk is kept on disk.
        """
        total = 0
        try:
            total = self._replay_files(sink, max_records)
            if max_records is None or total < max_records:
                with self._lock:
                    sealed = self._fd is not None and self._size > _HEADER_SIZE
                    if sealed:
                        self._seal()
                if sealed:
                    left = None if max_records is None else max_records - total
                    total += self._replay_files(sink, left)
        except _SinkFailed as failure:
            raise failure.error from None
        finally:
            self._remove_stale_tmp()
            self._report_bytes()
        return total

    def _replay_files(self, sink: Writer, max_records: int | None) -> int:
        total = 0
        for path in self._files():
            left = None if max_records is None else max_records - total
            if left is not None and left <= 0:
                break
            total += self._replay_file(path, sink, left)
        return total

    def status(self, *, holders: bool = False) -> SpoolStatus:
        """What waits on disk. With ``holders``, also which live processes hold files (for
        the commands): each file is probed with a shared lock for an instant, which a replayer
        meeting it takes for a holder, so it retries that file at its next scan."""
        files = records = size = 0
        oldest: datetime | None = None
        held: dict[int, int] = {}
        for path in self._files():
            try:
                with open(path, "rb") as f:
                    size_now = os.fstat(f.fileno()).st_size
                    f.seek(_read_offset(f.readline()))
                    lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
                    if holders and _is_held(f.fileno()):
                        pid = int(path.name.split("-")[1])  # its writer: see _create
                        held[pid] = held.get(pid, 0) + lines
            except (OSError, ValueError):
                continue  # replayed and removed meanwhile, or unreadable
            files += 1
            records += lines
            size += size_now
            if oldest is None:
                oldest = datetime.fromtimestamp(int(path.name[:20]) / 1e9, UTC)
        return SpoolStatus(files=files, records=records, bytes=size, oldest=oldest,
                           held=tuple(sorted(held.items())))

    def close(self) -> None:
        """Seal our file: its records become replayable by any process."""
        with self._lock:
            self._seal()

    # -- appending -------------------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        if self._fd is not None and self._size >= MAX_FILE_BYTES:
            self._seal()
        if self._fd is None:
            self._fd = self._create()
            self._size = _HEADER_SIZE
        start = self._size
        try:
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError:
            # Leave no torn line behind, and never append after a failure.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            self._seal()
            raise
        self._size += len(data)

    def _create(self) -> int:
        """A new file of ours, locked before any other process can see its name."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._open_fds.add(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, _header(_HEADER_SIZE) + _SCHEMA_LINE)
            os.fsync(fd)
            os.rename(tmp, self.directory / f"{name}.spool")
            _fsync_dir(self.directory)
        except OSError:
            self._close_fd(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd

    def _seal(self) -> None:
        if self._fd is not None:
            self._close_fd(self._fd)
            self._fd = None

    def _close_fd(self, fd: int) -> None:
        self._open_fds.discard(fd)
        with contextlib.suppress(OSError):  # the descriptor is released either way
            os.close(fd)

    def _after_fork(self) -> None:
        """In a forked child: never append to the parent's file nor keep its locks alive.
        The inherited descriptors are closed (never LOCK_UN: the lock is shared with the
        parent's)."""
        for fd in self._open_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open_fds = set()
        self._fd = None
        self._size = 0
        self._lock = threading.Lock()

    # -- replaying -------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        try:
            names = os.listdir(self.directory)
        except OSError:  # missing or unusable: appends report the latter as SpoolError
            return []
        return [self.directory / n for n in sorted(names) if _NAME.match(n)]

    def _replay_file(self, path: Path, sink: Writer, limit: int | None) -> int:
        """Replay one file if nobody holds it. A disk error skips the file (it is logged;
        the next replay tries again); only a sink failure propagates, as ``_SinkFailed``."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0  # replayed and removed since our listdir
        except OSError as error:
            log.warning("cost_middleware: cannot open spool file %r (%s)", path.name, error)
            return 0
        self._open_fds.add(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:
                return 0  # replayed and removed between our listdir and our lock
            with open(fd, "rb", closefd=False) as f:
                try:
                    offset = _read_offset(f.readline())
                    decoder = _Decoder(f.readline())
                except (ValueError, KeyError, TypeError):
                    self._quarantine(path)
                    return 0
                f.seek(offset)
                return self._replay_lines(_lines(f, offset), decoder, fd, path, sink, limit)
        except BlockingIOError:
            return 0  # its owner is alive, or another process is replaying it
        except OSError as error:
            log.warning("cost_middleware: spool file %r skipped for now (%s)", path.name, error)
            return 0
        finally:
            self._close_fd(fd)

    def _replay_lines(self, lines: Iterator[tuple[bytes, int]], decoder: _Decoder, fd: int,
                      path: Path, sink: Writer, limit: int | None) -> int:
        """Replay one locked file from its offset; remove it once every line is done."""
        chunk: list[CostRecord] = []
        replayed = corrupt = 0
        finished = True
        for line, end in lines:
            # A line without its newline is a write its process did not finish.
            record = decoder.decode(line) if line.endswith(b"\n") else None
            if record is None:
                corrupt += 1
            else:
                chunk.append(record)
            if len(chunk) >= REPLAY_CHUNK or (limit is not None and replayed + len(chunk) >= limit):
                replayed += self._send(sink, chunk, fd, end)
                chunk = []
                if limit is not None and replayed >= limit:
                    finished = False
                    break
        else:
            if chunk:
                replayed += self._send(sink, chunk, fd, end)
        if corrupt:
            log.warning("cost_middleware: skipped %d corrupt line(s) in spool file %r",
                        corrupt, path.name)
            if self._metrics is not None:
                self._metrics.incr("spool.corrupt", corrupt)
        if finished:
            # The offset already says "done", so a replayer that raced us to the name
            # finds nothing left even if this unlink were lost.
            if replayed == 0:
                os.pwrite(fd, b"%0*d" % (_OFFSET_WIDTH, os.fstat(fd).st_size), len(MAGIC))
            os.unlink(path)
        return replayed

    def _send(self, sink: Writer, chunk: list[CostRecord], fd: int, end: int) -> int:
        try:
            inserted = sink.write(chunk)
        except Exception as error:
            raise _SinkFailed(error) from error
        os.pwrite(fd, b"%0*d" % (_OFFSET_WIDTH, end), len(MAGIC))
        if self._metrics is not None:
            self._metrics.incr("records.replayed", inserted)
            if inserted < len(chunk):
                self._metrics.incr("records.duplicates", len(chunk) - inserted)
        return len(chunk)

    def _quarantine(self, path: Path) -> None:
        log.error("cost_middleware: spool file %r has no valid header; renamed to *.corrupt",
                  path.name)
        if self._metrics is not None:
            self._metrics.incr("spool.corrupt")
        with contextlib.suppress(OSError):
            os.rename(path, path.with_name(path.name + ".corrupt"))

    def _remove_stale_tmp(self) -> None:
        """Remove files a process died creating (they never received a record)."""
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith(".tmp")]
        except OSError:
            return
        for name in names:
            path = self.directory / name
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > _STALE_TMP_SECONDS:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        os.unlink(path)
                    finally:
                        os.close(fd)

    def _report_bytes(self) -> None:
        if self._metrics is None:
            return
        total = 0
        for path in self._files():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        self._metrics.gauge("spool.bytes", total)


def _lines(f: Any, offset: int) -> Iterator[tuple[bytes, int]]:
    """Each line of ``f`` from ``offset`` with the byte position just after it."""
    position = offset
    for line in f:
        position += len(line)
        yield line, position


def _read_offset(header: bytes) -> int:
    if not header.startswith(MAGIC) or len(header) != len(MAGIC) + _OFFSET_WIDTH + 1:
        raise ValueError("not a spool file header")
    return int(header[len(MAGIC):-1])


def _is_held(fd: int) -> bool:
    """Whether another open file holds the file's lock (its live writer, or a replayer)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: Path) -> None:
    """Make a new file's name durable, not only its contents."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
