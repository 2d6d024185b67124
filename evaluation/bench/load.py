"""Load generation: a closed loop (fixed concurrency) or an open loop (Poisson arrivals), in threads.

Both stop at ``requests`` sent or ``duration`` seconds (whichever comes first), or when ``stop``
is set (Ctrl-C). A level's wall-clock time runs from its first send to its last reply; requests
still in flight when ``stop`` is set are abandoned (daemon threads) and counted, not measured.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from .client import Client, RequestRecord


@dataclass(frozen=True)
class Level:
    """One point of a sweep: a concurrency (closed loop) or an arrival rate in requests/s (open loop)."""

    mode: str  # "concurrency" | "rate"
    value: float

    @property
    def label(self) -> str:
        return f"{self.mode}={self.value:g}"


@dataclass
class LevelRun:
    level: Level
    records: list[RequestRecord] = field(default_factory=list)
    wall_s: float = 0.0
    abandoned: int = 0  # in flight when the run was stopped
    interrupted: bool = False


class _Progress:
    """A tqdm bar (shown on a terminal only) counting replies and errors."""

    def __init__(self, total: int | None, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="req", leave=True, disable=None, dynamic_ncols=True)
        self.errors = 0
        self.lock = threading.Lock()

    def done(self, rec: RequestRecord) -> None:
        with self.lock:
            self.errors += not rec.ok
            self.bar.update(1)
            if self.errors:
                self.bar.set_postfix(errors=self.errors, refresh=False)

    def close(self) -> None:
        self.bar.close()


class _Tracker:
    """Records replies; knows how many requests are still in flight and when the last one ended."""

    def __init__(self, progress: _Progress):
        self.records: list[RequestRecord] = []
        self.inflight = 0
        self.first_sent: float | None = None
        self.last_done: float | None = None
        self.lock = threading.Lock()
        self.progress = progress

    def sending(self) -> None:
        with self.lock:
            self.inflight += 1
            if self.first_sent is None:
                self.first_sent = time.perf_counter()

    def done(self, rec: RequestRecord) -> None:
        with self.lock:
            self.inflight -= 1
            self.records.append(rec)
            self.last_done = time.perf_counter()
        self.progress.done(rec)

    def result(self, level: Level, stopped: bool) -> LevelRun:
        with self.lock:
            records = sorted(self.records, key=lambda r: r.index)
            end = self.last_done if not stopped or self.inflight == 0 else time.perf_counter()
            wall = (end - self.first_sent) if self.first_sent is not None and end is not None else 0.0
            return LevelRun(level, records, wall, abandoned=self.inflight if stopped else 0, interrupted=stopped)


def _join(threads: list[threading.Thread]) -> None:
    """Join with a timeout so Ctrl-C reaches the main thread."""
    for t in threads:
        while t.is_alive():
            t.join(0.2)


def run_level(
    client: Client,
    items,
    level: Level,
    *,
    t0: float,
    requests: int | None = None,
    duration: float | None = None,
    stop: threading.Event,
    phase: str = "measure",
    seed: int = 0,
) -> LevelRun:
    """Run one level; on KeyboardInterrupt set ``stop`` and return what was measured."""
    progress = _Progress(requests, f"{phase} {level.label}")
    tracker = _Tracker(progress)
    label = level.label if phase == "measure" else None
    deadline = time.perf_counter() + duration if duration else None
    try:
        if level.mode == "concurrency":
            _closed_loop(client, items, int(level.value), tracker, t0, requests, deadline, stop, phase, label)
        else:
            _open_loop(client, items, level.value, tracker, t0, requests, deadline, stop, phase, label, seed)
    except KeyboardInterrupt:
        stop.set()
    finally:
        progress.close()
    return tracker.result(level, stop.is_set())


def _send(client: Client, tracker: _Tracker, rec: RequestRecord, prompt: str, t0: float) -> None:
    tracker.done(client.send(rec, prompt, t0))


def _closed_loop(client, items, concurrency, tracker, t0, requests, deadline, stop, phase, label) -> None:
    """``concurrency`` workers, each sending its next request as soon as its last one is answered."""
    lock = threading.Lock()
    count = 0

    def next_job():
        nonlocal count
        with lock:
            if (
                stop.is_set()
                or (requests is not None and count >= requests)
                or (deadline is not None and time.perf_counter() >= deadline)
            ):
                return None
            prompt, adapter, tokens = next(items)
            rec = RequestRecord(count, phase, label, adapter, client.stream, max_new_tokens=tokens)
            count += 1
            tracker.sending()
            return rec, prompt

    def worker():
        while (job := next_job()) is not None:
            _send(client, tracker, job[0], job[1], t0)

    threads = [threading.Thread(target=worker, daemon=True, name=f"bench-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    _join(threads)


def _open_loop(client, items, rate, tracker, t0, requests, deadline, stop, phase, label, seed) -> None:
    """Poisson arrivals: exponential gaps with mean 1/rate (seeded); each request in its own thread,
    so a slow server builds a queue on its side, not ours."""
    rng = random.Random(f"{seed}:{label or phase}")
    threads = []
    next_at = time.perf_counter()
    i = 0
    while not stop.is_set() and (requests is None or i < requests):
        if deadline is not None and next_at >= deadline:
            break
        if stop.wait(max(0.0, next_at - time.perf_counter())):
            break
        prompt, adapter, tokens = next(items)
        rec = RequestRecord(i, phase, label, adapter, client.stream, max_new_tokens=tokens)
        tracker.sending()
        t = threading.Thread(target=_send, args=(client, tracker, rec, prompt, t0), daemon=True)
        t.start()
        threads.append(t)
        i += 1
        next_at += rng.expovariate(rate)
    _join(threads)
