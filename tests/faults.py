"""A TCP proxy in front of PostgreSQL that fault tests cut and restore (loopback only)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

import sqlalchemy as sa


class Proxy:
    """A loopback TCP forwarder to PostgreSQL. ``cut()`` resets every connection and refuses
    new ones until ``restore()``; like a database restart or a network partition with RST."""

    MAX_CONNECTIONS = 32

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._up = True
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        #: A server reply to hold back: the proxy cuts instead of forwarding it (see cut_on_reply).
        self._fatal_reply: bytes | None = None
        self.cut_replies = 0
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def url(self, database_url: str) -> str:
        return str(sa.make_url(database_url).set(host="127.0.0.1", port=self.port))

    def cut(self) -> None:
        with self._lock:
            self._up = False
            for s in list(self._sockets):
                _reset(s)
            self._sockets.clear()

    def cut_on_reply(self, marker: bytes | None) -> None:
        """Cut, once, the moment the server sends bytes holding ``marker``, before the client
        gets them: the statement has run (and, in autocommit, committed), its answer is lost.
        ``b"COPY "`` catches the CommandComplete of a COPY, ``b"COMMIT"`` that of a COMMIT."""
        with self._lock:
            self._fatal_reply = marker

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._acceptor.join(5)
        self._listener.close()
        for t in self._threads:
            t.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if not self._up or len(self._sockets) >= 2 * self.MAX_CONNECTIONS:
                    _reset(client)
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _reset(client)
                    continue
                upstream.settimeout(None)
                self._sockets |= {client, upstream}
            self._threads = [t for t in self._threads if t.is_alive()]
            for src, dst, replies in ((client, upstream, False), (upstream, client, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, replies), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                marker = self._fatal_reply
                if replies and marker is not None and marker in data:
                    with self._lock:
                        self._fatal_reply = None
                        self.cut_replies += 1
                    self.cut()
                    self.restore()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                for s in (src, dst):
                    if s in self._sockets:
                        self._sockets.discard(s)
                        _reset(s)


def _reset(s: socket.socket) -> None:
    """Close with RST, as a vanished peer would (shutdown first: it wakes a blocked recv)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
