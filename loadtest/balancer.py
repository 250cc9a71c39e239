"""Tiny round-robin TCP load balancer, the nginx stand-in of scripts/run_stack.sh where nginx is
not installed.

    python -m loadtest.balancer --listen 127.0.0.1:8080 --backend 127.0.0.1:8001 --backend 127.0.0.1:8002

Balances per connection (nginx balances per request): a keep-alive client sticks to one replica,
so spread load with many clients (locust users each hold their own connection). A backend that
refuses the connection is skipped for that connection, so a dead replica costs no failed request.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import sys

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()


class RoundRobinBalancer:
    def __init__(self, backends: list[tuple[str, int]], connect_timeout_s: float = 2.0) -> None:
        if not backends:
            raise ValueError("RoundRobinBalancer needs at least one backend")
        self.backends = backends
        self.connect_timeout_s = connect_timeout_s
        self._next = itertools.cycle(range(len(backends)))
        self.connections = [0] * len(backends)  # accepted connections per backend (tests, logs)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            i = next(self._next)
            host, port = self.backends[i]
            try:
                conn = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout_s)
            except (OSError, asyncio.TimeoutError) as e:
                log.warning("backend %s:%d unavailable (%s); trying the next", host, port, e)
                continue
            self.connections[i] += 1
            return conn
        return None

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        conn = await self._connect()
        if conn is None:
            log.error("no backend reachable; closing the client connection")
            client_w.close()
            return
        backend_r, backend_w = conn
        tasks = [asyncio.create_task(_pipe(client_r, backend_w)), asyncio.create_task(_pipe(backend_r, client_w))]
        try:
            # either side closing ends the exchange (HTTP clients close only after their answers)
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (backend_w, client_w):
                w.close()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        server = await asyncio.start_server(self.handle, host, port)
        log.info("balancing %s:%d over %s", host, port, ", ".join(f"{h}:{p}" for h, p in self.backends))
        return server


async def _main(listen: tuple[str, int], backends: list[tuple[str, int]]) -> None:
    server = await RoundRobinBalancer(backends).serve(*listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    log.info("balancer stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.balancer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to accept clients on")
    ap.add_argument("--backend", action="append", required=True, help="HOST:PORT of a replica (repeat)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(parse_hostport(args.listen), [parse_hostport(b) for b in args.backend]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
