"""Reading a price refresh's source: a local file, or an http(s) URL with the standard library.

Bounded: every network operation has a timeout and the whole download a deadline, and at most
:data:`MAX_BYTES` are read. Content already seen is not read again: a URL is asked with the
``ETag`` / ``Last-Modified`` of the last answer (a ``304`` means unchanged), a file is compared
by size and modification time. A redirect never leaves https for http, and only http(s) is
followed. Failures raise :class:`FetchError` with one line for the log.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

#: A price map is a few MB (LiteLLM's: about 1.5 MB): anything this large is not one.
MAX_BYTES = 64 * 1024 * 1024
#: Seconds for a connection or one read to make progress.
TIMEOUT = 20.0
#: Seconds for the whole download.
DEADLINE = 120.0
_CHUNK = 256 * 1024
#: The file name an import labels rows with: kept to a short, plain name.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_NAME_LENGTH = 100


class FetchError(Exception):
    """The source could not be read; the message is one line naming the cause."""


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies content already read, to skip reading it again."""

    etag: str | None = None
    last_modified: str | None = None
    #: A file's (size, mtime in ns).
    stat: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A source read: its bytes (None: unchanged since the validators given) and what
    identifies them."""

    body: bytes | None
    validators: Validators


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def file_name(source: str) -> str:
    """The source's file name (the last path segment), as an import labels its rows."""
    path = unquote(urlsplit(source).path) if is_url(source) else source
    name = _UNSAFE.sub("_", Path(path).name)[:_NAME_LENGTH].strip("._")
    return name or "prices.json"


def shown(source: str) -> str:
    """``source`` for a log line: a URL without its credentials, query or fragment."""
    if not is_url(source):
        return source
    parts = urlsplit(source)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def fetch(source: str, previous: Validators | None = None, *, timeout: float = TIMEOUT,
          deadline: float = DEADLINE, max_bytes: int = MAX_BYTES) -> Fetched:
    """Read ``source`` unless it is unchanged since ``previous``."""
    if is_url(source):
        return _fetch_url(source, previous, timeout, time.monotonic() + deadline, max_bytes)
    return _read_file(source, previous, max_bytes)


def _read_file(path: str, previous: Validators | None, max_bytes: int) -> Fetched:
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            validators = Validators(stat=(info.st_size, info.st_mtime_ns))
            if previous is not None and previous.stat == validators.stat:
                return Fetched(None, validators)
            if info.st_size > max_bytes:
                raise FetchError(f"{path} is larger than {max_bytes:,} bytes")
            return Fetched(file.read(max_bytes + 1), validators)
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows http(s) redirects only, and never from https to http."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        target = newurl.lower()
        if not is_url(target) or (req.full_url.lower().startswith("https://")
                                  and not target.startswith("https://")):
            raise FetchError(f"refused a redirect from {shown(req.full_url)} to "
                             f"{shown(newurl)} (only to https)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_url(url: str, previous: Validators | None, timeout: float, deadline: float,
               max_bytes: int) -> Fetched:
    from cost_middleware import __version__

    headers = {"User-Agent": f"cost-middleware/{__version__} (prices refresh)",
               "Accept": "application/json"}
    if previous is not None and previous.etag:
        headers["If-None-Match"] = previous.etag
    if previous is not None and previous.last_modified:
        headers["If-Modified-Since"] = previous.last_modified
    opener = urllib.request.build_opener(_NoDowngrade())
    where = shown(url)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as answer:
            validators = Validators(etag=answer.headers.get("ETag"),
                                    last_modified=answer.headers.get("Last-Modified"))
            length = answer.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"{where} is larger than {max_bytes:,} bytes")
            return Fetched(_read_bounded(answer, where, deadline, max_bytes), validators)
    except urllib.error.HTTPError as exc:
        with exc:  # an error answer holds its connection until closed
            if exc.code == 304 and previous is not None:
                return Fetched(None, previous)
            raise FetchError(f"{where}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot reach {where}: {exc.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise FetchError(f"{where}: {type(exc).__name__}: {exc}") from None


def _read_bounded(answer: IO[bytes], where: str, deadline: float, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := answer.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"{where} is larger than {max_bytes:,} bytes")
        if time.monotonic() > deadline:
            raise FetchError(f"{where}: the download did not finish in time")
        chunks.append(chunk)
    return b"".join(chunks)
