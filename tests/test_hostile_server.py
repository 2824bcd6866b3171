"""A gzip bomb through a real uvicorn server: the event loop is not held, memory stays flat.

The server streams a 3.5 MB gzip-encoded event stream that inflates to 900 MB (the issue's
bomb) while a client times a ``/ping`` route every 2 ms. The same app runs bare and wrapped
in ``CostMiddleware``; the middleware may not add a stall over 10 ms, nor grow the server's
peak memory (``VmHWM``) by more than 32 MB, and the client receives exactly the bytes sent.

The server runs this module's app factories: ``uvicorn --factory test_hostile_server:wrapped``
(or ``:bare``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

from cost_middleware import CostMiddleware
from cost_middleware._types import ASGIApp, Receive, Scope, Send

BOMB_VARIABLE = "HOSTILE_BOMB_FILE"
#: One OpenAI-shaped event, repeated to 900 MB; gzip -9 makes that 3.5 MB, as in the issue.
EVENT = (b'data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1,'
         b'"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"aaaa"}}]}\n\n')
INFLATED = 900_000_000
SEND_BYTES = 64 << 10
#: Allowed extra over the bare app: the issue's targets.
MAX_EXTRA_STALL = 0.010
MAX_PEAK_GROWTH = 32 << 20


def make_bomb(path: Path) -> bytes:
    block = EVENT * (1_000_000 // len(EVENT))
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(block) for _ in range(INFLATED // len(block))]
    bomb = b"".join(parts) + packer.flush()
    path.write_bytes(bomb)
    return bomb


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/ping`` answers at once; any other path streams the bomb, read from the file."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/ping":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"pong"})
        return
    bomb = Path(os.environ[BOMB_VARIABLE]).read_bytes()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream"), (b"content-encoding", b"gzip")]})
    for start in range(0, len(bomb), SEND_BYTES):
        await send({"type": "http.response.body", "body": bomb[start:start + SEND_BYTES],
                    "more_body": True})
        await asyncio.sleep(0)  # as a proxy awaiting its upstream would
    await send({"type": "http.response.body", "body": b""})


def bare() -> ASGIApp:
    return app


def wrapped() -> ASGIApp:
    return CostMiddleware(app)

#: Run by a separate interpreter, so that its parsing and hashing never delay the pings.
DOWNLOAD = """
import hashlib, sys, httpx
digest = hashlib.sha256()
with httpx.stream("POST", sys.argv[1], json={"model": "gpt-4o", "stream": True},
                  timeout=60) as reply:
    for chunk in reply.iter_raw():
        digest.update(chunk)
print(digest.hexdigest())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_ticks(pid: int) -> int:
    """User and system CPU time a process has used, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class Server:
    def __init__(self, app: str, tmp: Path, bomb: Path, statsd_port: int) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), BOMB_VARIABLE: str(bomb),
               "COST_MIDDLEWARE_DATABASE_URL": f"sqlite:///{tmp / 'cost.db'}",
               "COST_MIDDLEWARE_SPOOL_DIR": str(tmp / "spool"),
               "COST_MIDDLEWARE_STATSD_HOST": "127.0.0.1",
               "COST_MIDDLEWARE_STATSD_PORT": str(statsd_port),
               "COST_MIDDLEWARE_FLUSH_INTERVAL": "0.2"}
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "uvicorn"), "--factory",
             f"test_hostile_server:{app}", "--port", str(self.port), "--log-level", "warning",
             "--no-access-log", "--lifespan", "on"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
                continue
            # The engine started at lifespan opens its ledger in the background (importing
            # SQLAlchemy, creating and seeding tables): that is done before anything is
            # measured, once the server's CPU time stands still.
            used = cpu_ticks(self.proc.pid)
            while time.monotonic() < deadline:
                time.sleep(0.3)
                used, before = cpu_ticks(self.proc.pid), used
                if used == before:
                    return
        self.stop()
        raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def bomb_under_pings(port: int) -> tuple[float, str]:
    """The longest ``/ping`` round trip while the bomb downloads, and the download's hash."""
    import httpx

    latencies: list[float] = []
    done = threading.Event()

    def ping() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            client.get("/ping")  # connected before the download starts
            ready.set()
            tick = time.perf_counter()
            while not done.is_set():
                t0 = time.perf_counter()
                assert client.get("/ping").content == b"pong"
                latencies.append(time.perf_counter() - t0)
                tick += 0.002
                time.sleep(max(0.0, tick - time.perf_counter()))

    ready = threading.Event()
    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    ready.wait(30)
    try:
        downloaded = subprocess.run(
            [sys.executable, "-c", DOWNLOAD, f"http://127.0.0.1:{port}/v1/chat/completions"],
            capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    finally:
        done.set()
        pinger.join(30)
    return max(latencies), downloaded


def test_a_gzip_bomb_neither_holds_the_loop_nor_grows_memory(tmp_path: Path) -> None:
    bomb_file = tmp_path / "bomb.gz"
    bomb = make_bomb(bomb_file)
    assert 3_000_000 < len(bomb) < 4_000_000
    sent = hashlib.sha256(bomb).hexdigest()
    figures: dict[str, list[float]] = {"bare": [], "wrapped": []}
    growth: dict[str, int] = {}
    statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    statsd.bind(("127.0.0.1", 0))
    statsd.settimeout(0.5)
    port = statsd.getsockname()[1]
    servers = {name: Server(name, tmp_path / name, bomb_file, port) for name in figures}
    try:
        peaks = {name: peak_rss(server.proc.pid) for name, server in servers.items()}
        # Alternating rounds; the best of three is the figure least disturbed by a shared
        # machine, while a stall of ours would show in every round.
        for _ in range(3):
            for name, server in servers.items():
                stall, received = bomb_under_pings(server.port)
                assert received == sent  # the client got exactly what the app sent
                figures[name].append(stall)
        growth = {name: peak_rss(server.proc.pid) - peaks[name]
                  for name, server in servers.items()}
        skips = 0
        # The servers flush every 0.2 s once their worker runs; its first flush waits for the
        # ledger to be opened and seeded, which a busy machine can stretch past one recv.
        deadline = time.monotonic() + 15
        while skips < 3:  # a timeout (a failure) if the skips never come
            try:
                data = statsd.recv(65536)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                continue
            for line in data.splitlines():
                metric, _, value = line.partition(b":")
                if metric == b"cost_middleware.skipped.decompress_ratio":
                    skips += int(value.split(b"|")[0])
    finally:
        for server in servers.values():
            server.stop()
        statsd.close()
    extra = min(figures["wrapped"]) - min(figures["bare"])
    print("\n" + "; ".join(
        f"{name}: longest /ping {', '.join(f'{s * 1e3:.1f}' for s in stalls)} ms, "
        f"peak RSS growth {growth[name] / 1e6:.1f} MB" for name, stalls in figures.items()))
    assert extra <= MAX_EXTRA_STALL
    assert growth["wrapped"] <= MAX_PEAK_GROWTH
