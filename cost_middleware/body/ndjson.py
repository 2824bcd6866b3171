"""Newline-delimited JSON (Ollama streams): one event per line."""

from __future__ import annotations

from cost_middleware.body.events import (
    NDJSON_TOO_LARGE,
    PIECE_ALLOWANCE,
    PIECE_BYTES,
    Delimited,
    Event,
    new_event,
)


class NDJSONDecoder(Delimited):
    """Newline-delimited JSON: one event per line that is not blank (a trailing CR is dropped).

    ``close()`` returns a final line that had no newline. A read of more lines than the
    density cap allows (see :mod:`~cost_middleware.body.events`) is ``stream_too_dense``.
    """

    __slots__ = ()
    _SEP = b"\n"
    _TOO_LARGE = NDJSON_TOO_LARGE

    def feed(self, chunk: bytes) -> list[Event]:
        if self.error is not None or not chunk:
            return []
        data = self._take(chunk) if self._held else chunk
        if data is None:
            return []
        lines = data.split(b"\n")
        if len(lines) > PIECE_ALLOWANCE + len(data) // PIECE_BYTES:
            self._fail(dense=True)
            return []
        self._keep(lines.pop())
        return self._events(lines, len(data) > self._max)

    def close(self) -> list[Event]:
        if self.error is not None or not self._held:
            return []
        return self._events([self._release()], False)

    def _events(self, lines: list[bytes], check_size: bool) -> list[Event]:
        if check_size:
            for i, line in enumerate(lines):
                if len(line) > self._max:
                    self._fail()
                    del lines[i:]
                    break
        # ``line[0] > 32`` spares the isspace() call on the usual line starting with ``{``.
        return [
            new_event(Event, (None, line.rstrip(b"\r")))
            for line in lines
            if line and (line[0] > 32 or not line.isspace())
        ]
