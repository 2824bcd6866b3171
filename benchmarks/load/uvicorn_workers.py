"""``uvicorn`` with its command-line arguments, TCP_NODELAY kept for ``--workers N``.

uvicorn binds the shared listener of ``--workers N`` with ``proto`` 0, so asyncio never sets
TCP_NODELAY on accepted connections and every keep-alive response waits ~40 ms for the
client's delayed ACK (https://github.com/Kludex/uvicorn/issues/3149). That would measure
Nagle, not the middleware: the listener is re-wrapped with ``IPPROTO_TCP`` here.

    python benchmarks/load/uvicorn_workers.py load.asgi_gateway:app --workers 2 ...
"""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.config import Config

_bind_socket = Config.bind_socket


def _bind_tcp_socket(self: Config) -> socket.socket:
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


Config.bind_socket = _bind_tcp_socket  # type: ignore[method-assign]

if __name__ == "__main__":
    uvicorn.main()
