"""Open-loop load over a minimal keep-alive HTTP/1.1 client: score and events requests at fixed rates.

Requests are launched on a fixed schedule, whatever the previous ones are doing (up to `max_inflight`
at once; past it a request is counted as `overflow`, not delayed), and each latency is measured from
its scheduled time: a stall of the service shows in the figures instead of slowing the generator.
Every acknowledged event (200) is remembered, so a scenario can check afterwards that Redis holds it.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from loadtest.faults.stack import World

NOW_MS = 1_764_400_000_000
_EVENT_SEQ = itertools.count()  # one sequence for every Load of the process: (user, item, ts) never repeat


@dataclass
class Sample:
    kind: str        # "score" | "events"
    t: float         # scheduled send, time.monotonic()
    ms: float        # latency from the scheduled send
    status: str      # "200", "503", ... or "conn_error", "timeout", "overflow"
    degraded: tuple[str, ...] = ()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                      ) -> Answer:
        head = [f"{method} {path} HTTP/1.1", "Host: faults", f"Content-Length: {len(body)}"]
        if body:
            head.append("Content-Type: application/json")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed by the server")
        status = int(status_line.split(b" ", 2)[1])
        hdrs: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        data = await self.reader.readexactly(int(hdrs.get("content-length", "0")))
        return Answer(status, hdrs, data)

    def close(self) -> None:
        self.writer.close()


class Client:
    """A pool of keep-alive connections to one host:port."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.port, self.timeout_s = port, timeout_s
        self._idle: list[Connection] = []

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                      ) -> Answer:
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else Connection(*await asyncio.open_connection("127.0.0.1", self.port))
        try:
            ans = await asyncio.wait_for(conn.request(method, path, body, headers), self.timeout_s)
        except (ConnectionError, asyncio.IncompleteReadError):
            conn.close()
            if not reused:
                raise
            # the server closed this idle keep-alive connection (uvicorn: after 5 s): once more, on a new one
            conn = Connection(*await asyncio.open_connection("127.0.0.1", self.port))
            try:
                ans = await asyncio.wait_for(conn.request(method, path, body, headers), self.timeout_s)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        if ans.headers.get("connection", "").lower() == "close":
            conn.close()
        else:
            self._idle.append(conn)
        return ans

    def close(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()


@dataclass
class Load:
    """Score requests at `score_rps` and event batches at `events_rps` against the stack's scorer."""

    port: int
    world: World
    score_rps: float = 20.0
    events_rps: float = 5.0
    max_inflight: int = 64
    candidates: tuple[int, int] = (10, 50)
    seed: int = 0
    samples: list[Sample] = field(default_factory=list)
    acked: list[tuple[int, int, int]] = field(default_factory=list)  # (user, item, ts) of stored events

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._client = Client(self.port)
        self._inflight = 0
        self._seq = _EVENT_SEQ
        self._tasks: set[asyncio.Task] = set()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task | None = None
        self._prefix = f"f{self.seed}-{int(time.time() * 1000)}"  # event ids unique across runs

    def _user(self) -> int:
        return self.world.first_user + self._rng.randrange(self.world.users)

    def _score_body(self) -> bytes:
        n = self._rng.randint(*self.candidates)
        cands = [{"item_id": self._rng.randint(1, self.world.items)} for _ in range(n)]
        return json.dumps({"user_id": self._user(), "candidates": cands}).encode()

    def _events_body(self) -> tuple[bytes, list[tuple[int, int, int]]]:
        evs, keys = [], []
        for _ in range(self._rng.randint(1, 3)):
            i = next(self._seq)
            user, item, ts = self._user(), self._rng.randint(1, self.world.items), NOW_MS + i  # ts unique per run
            evs.append({"event_id": f"{self._prefix}-{i}", "user_id": user, "item_id": item, "ts": ts,
                        "cross": {"play_ratio": round(self._rng.random(), 3), "liked": self._rng.randint(0, 1)}})
            keys.append((user, item, ts))
        return json.dumps({"events": evs}).encode(), keys

    async def _one(self, kind: str, t: float) -> None:
        self._inflight += 1
        try:
            if kind == "score":
                body, keys = self._score_body(), None
                path = "/v1/score"
            else:
                (body, keys), path = self._events_body(), "/v1/events"
            try:
                ans = await self._client.request("POST", path, body)
                status, degraded = str(ans.status), ()
                if ans.status == 200 and kind == "score":
                    degraded = tuple(ans.json()["degraded_reasons"])
                if ans.status == 200 and keys is not None:
                    self.acked.extend(keys)
            except (TimeoutError, asyncio.TimeoutError):
                status, degraded = "timeout", ()
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                status, degraded = "conn_error", ()
            self.samples.append(Sample(kind, t, (time.monotonic() - t) * 1e3, status, degraded))
        finally:
            self._inflight -= 1

    async def _schedule(self, kind: str, rps: float) -> None:
        if rps <= 0:
            return
        period, t = 1.0 / rps, time.monotonic()
        while not self._stop.is_set():
            t += period
            delay = t - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            if self._inflight >= self.max_inflight:
                self.samples.append(Sample(kind, t, 0.0, "overflow"))
                continue
            task = asyncio.create_task(self._one(kind, t))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        self._runner = asyncio.ensure_future(asyncio.gather(self._schedule("score", self.score_rps),
                                                            self._schedule("events", self.events_rps)))

    async def stop(self) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._client.close()

    # ---- figures ------------------------------------------------------------------------------------
    def window(self, t0: float = 0.0, t1: float = float("inf"), kind: str | None = None) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.t < t1 and (kind is None or s.kind == kind)]


def p99(samples: list[Sample]) -> float:
    ms = [s.ms for s in samples if s.status == "200"]
    return float(np.percentile(ms, 99)) if ms else float("nan")


def status_counts(samples: list[Sample]) -> Counter:
    return Counter(s.status for s in samples)
