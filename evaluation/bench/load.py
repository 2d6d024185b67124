"""Load generation: a closed loop (fixed concurrency) or an open loop (arrivals at a rate), in threads.

The open loop's gaps are gamma-distributed with mean 1/rate and shape ``burstiness`` (1: Poisson, exponential
gaps; below 1 burstier, above 1 more even), as vLLM's ``bench serve --burstiness``; ``max_concurrency`` caps the
requests in flight (an arrival waits for a free slot, later arrivals keep their schedule); ``ramp_up`` seconds
raise the rate linearly from 0 to the level's rate. The closed loop's ``ramp_up`` starts its workers one after
the other over that time. Both stop at ``requests`` sent or ``duration`` seconds (whichever comes first), or
when ``stop`` is set (Ctrl-C). A level's wall-clock time runs from its first send to its last reply; requests
still in flight when ``stop`` is set are abandoned (daemon threads) and counted, not measured.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class Shape:
    """How requests arrive within a level (see the module docstring)."""

    burstiness: float = 1.0
    max_concurrency: int | None = None
    ramp_up: float = 0.0


@dataclass
class LevelRun:
    level: Level
    records: list[RequestRecord] = field(default_factory=list)
    wall_s: float = 0.0
    abandoned: int = 0  # in flight when the run was stopped
    interrupted: bool = False
    max_in_flight: int = 0  # the most requests in flight at once, as the client counted them


def arrival_times(rate: float, rng: random.Random, burstiness: float = 1.0, ramp_up: float = 0.0):
    """Endless arrival offsets in seconds from the level's start, the first at 0.

    Gaps are drawn in units of expected arrivals (gamma, shape ``burstiness``, mean 1) and mapped through the
    inverse of the expected count by time t, Λ(t) = rate·t²/(2·ramp_up) during the ramp and then grows by
    ``rate`` per second: without a ramp a gap is gamma with mean 1/rate, as vLLM draws it."""
    ramp_count = rate * ramp_up / 2  # arrivals expected during the ramp
    expected = 0.0
    while True:
        if expected < ramp_count:
            yield math.sqrt(2 * ramp_up * expected / rate)
        else:
            yield ramp_up + (expected - ramp_count) / rate
        expected += rng.gammavariate(burstiness, 1 / burstiness)


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
        self.max_inflight = 0
        self.first_sent: float | None = None
        self.last_done: float | None = None
        self.lock = threading.Lock()
        self.progress = progress

    def sending(self) -> None:
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
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
            return LevelRun(
                level,
                records,
                wall,
                abandoned=self.inflight if stopped else 0,
                interrupted=stopped,
                max_in_flight=self.max_inflight,
            )


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
    shape: Shape = Shape(),
) -> LevelRun:
    """Run one level; on KeyboardInterrupt set ``stop`` and return what was measured."""
    progress = _Progress(requests, f"{phase} {level.label}")
    tracker = _Tracker(progress)
    label = level.label if phase == "measure" else None
    deadline = time.perf_counter() + duration if duration else None
    try:
        if level.mode == "concurrency":
            _closed_loop(client, items, int(level.value), tracker, t0, requests, deadline, stop, phase, label, shape)
        else:
            _open_loop(client, items, level.value, tracker, t0, requests, deadline, stop, phase, label, seed, shape)
    except KeyboardInterrupt:
        stop.set()
    finally:
        progress.close()
    return tracker.result(level, stop.is_set())


def _record(index: int, phase: str, label: str | None, item, stream: bool, planned_at=None) -> RequestRecord:
    return RequestRecord(
        index,
        phase,
        label,
        item.adapter,
        stream,
        max_new_tokens=item.max_new_tokens,
        counted_prompt_tokens=item.prompt_tokens,
        prefix=item.prefix,
        planned_at=planned_at,
    )


def _send(client: Client, tracker: _Tracker, rec: RequestRecord, prompt: str, t0: float, slot=None) -> None:
    try:
        tracker.done(client.send(rec, prompt, t0))
    finally:
        if slot is not None:
            slot.release()


def _closed_loop(client, items, concurrency, tracker, t0, requests, deadline, stop, phase, label, shape) -> None:
    """``concurrency`` workers, each sending its next request as soon as its last one is answered; with a ramp-up,
    worker i starts i/concurrency of the way through it."""
    lock = threading.Lock()
    count = 0

    def next_job(planned_at=None):
        nonlocal count
        with lock:
            if (
                stop.is_set()
                or (requests is not None and count >= requests)
                or (deadline is not None and time.perf_counter() >= deadline)
            ):
                return None
            item = next(items)
            rec = _record(count, phase, label, item, client.stream, planned_at)
            count += 1
            tracker.sending()
            return rec, item.prompt

    def worker(i: int):
        start = i * shape.ramp_up / concurrency
        if start and stop.wait(start):
            return
        job = next_job(start if shape.ramp_up else None)
        while job is not None:
            _send(client, tracker, job[0], job[1], t0)
            job = next_job()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"bench-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    _join(threads)


def _acquire(slots: threading.BoundedSemaphore, stop: threading.Event, deadline: float | None) -> bool:
    """A free slot (True), or False once ``stop`` is set or the level's time is up."""
    while not slots.acquire(timeout=0.2):
        if stop.is_set() or (deadline is not None and time.perf_counter() >= deadline):
            return False
    return True


def _open_loop(client, items, rate, tracker, t0, requests, deadline, stop, phase, label, seed, shape) -> None:
    """Arrivals on the schedule ``arrival_times`` draws (seeded); each request in its own thread, so a slow server
    builds a queue on its side, not ours, unless ``max_concurrency`` caps the requests in flight: then an arrival
    waits here for a free slot."""
    rng = random.Random(f"{seed}:{label or phase}")
    times = arrival_times(rate, rng, shape.burstiness, shape.ramp_up)
    slots = threading.BoundedSemaphore(shape.max_concurrency) if shape.max_concurrency else None
    threads = []
    origin = time.perf_counter()
    i = 0
    while not stop.is_set() and (requests is None or i < requests):
        planned = next(times)
        if deadline is not None and origin + planned >= deadline:
            break
        if stop.wait(max(0.0, origin + planned - time.perf_counter())):
            break
        if slots is not None and not _acquire(slots, stop, deadline):
            break
        item = next(items)
        rec = _record(i, phase, label, item, client.stream, planned)
        tracker.sending()
        t = threading.Thread(target=_send, args=(client, tracker, rec, item.prompt, t0, slots), daemon=True)
        t.start()
        threads.append(t)
        i += 1
    _join(threads)
