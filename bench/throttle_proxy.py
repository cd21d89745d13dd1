#!/usr/bin/env python3
"""Bandwidth-capping TCP proxies on 127.0.0.1 (the `scale/replicas` bench case: one per replica).

    throttle_proxy.py --upstream HOST:PORT --rate 2000000 [--count N] [--port-file FILE]

Each proxy listens on its own free port of 127.0.0.1 and forwards every connection to `upstream`.  The
bytes sent back to the client (the downloads) go through **one token bucket per proxy**, shared by all
the connections of that proxy: a client with four connections gets `rate` in all, as behind a capped
link.  Requests (client -> upstream) are not throttled.  The bucket lets a burst of `burst` bytes (64 KiB)
through, then `rate` bytes per second; a chunk taken beyond the tokens puts the bucket in debt, and the
connection sleeps until the debt is paid (FIFO-fair between connections to within one 16 KiB chunk).

As a program: starts `--count` proxies, writes their ports (one a line) to `--port-file` once all listen,
and runs until SIGTERM/SIGINT.  As a module: `Proxies(upstream, rate, count)` runs them on an asyncio loop
in a background thread (`with Proxies(...) as p: p.ports, p.bytes_down`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path

CHUNK = 16 * 1024
BURST = 64 * 1024


class Bucket:
    """A token bucket of `rate` bytes/s, `burst` bytes deep; `take` may leave it in debt and sleeps it off."""

    def __init__(self, rate: float, burst: int = BURST) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class Proxy:
    def __init__(self, upstream: tuple[str, int], rate: float) -> None:
        self.upstream = upstream
        self.bucket = Bucket(rate)
        self.bytes_down = 0  # upstream -> client, after the bucket
        self.bytes_up = 0
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        up = asyncio.ensure_future(self._pipe(c_reader, u_writer, throttle=False))
        down = asyncio.ensure_future(self._pipe(u_reader, c_writer, throttle=True))
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        # HTTP: the response ends the exchange (werkzeug closes after it); a client that closed first ends it too
        await asyncio.wait([down], timeout=60)
        for task in (up, down):
            task.cancel()
        for w in (c_writer, u_writer):
            with contextlib.suppress(Exception):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, throttle: bool) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if throttle:
                    await self.bucket.take(len(data))
                    self.bytes_down += len(data)
                else:
                    self.bytes_up += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass


class Proxies:
    """`count` proxies to `upstream` ("host:port"), each capped at `rate` bytes/s, on a background loop."""

    def __init__(self, upstream: str, rate: float, count: int) -> None:
        host, _, port = upstream.rpartition(":")
        self.proxies = [Proxy((host or "127.0.0.1", int(port)), rate) for _ in range(count)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="throttle-proxies", daemon=True)

    @property
    def ports(self) -> list[int]:
        return [p.port for p in self.proxies]

    @property
    def bytes_down(self) -> list[int]:
        return [p.bytes_down for p in self.proxies]

    def __enter__(self) -> Proxies:
        self.thread.start()
        for p in self.proxies:
            asyncio.run_coroutine_threadsafe(p.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            for p in self.proxies:
                if p.server is not None:
                    p.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    p.add_argument("--rate", type=float, required=True, help="bytes per second sent back to each proxy's clients")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--port-file", type=Path)
    a = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Proxies(a.upstream, a.rate, a.count) as px:
        text = "".join(f"{port}\n" for port in px.ports)
        if a.port_file is not None:
            tmp = a.port_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(a.port_file)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        stop.wait()
        print(" ".join(f"{port}:{n}" for port, n in zip(px.ports, px.bytes_down, strict=True)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
