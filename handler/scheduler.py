"""The decode loop of continuous batching, in a thread of its own.

Requests are admitted between decode steps, first come first served, while the running batch has
fewer than ``max_rows`` rows and the rows' worst-case cost (prompt plus ``max_new_tokens`` each) fits
``max_batch_tokens``; they are prefilled together and merged into the running batch. Every step
decodes all running rows in one forward pass. A row that finishes, is cancelled or runs out of time
leaves at once; its slot and its cache go with it.

Each sequence reports through its callbacks, called on this thread: ``on_text(seq, tokens)`` with the
tokens whose text can no longer turn into a stop string, as ``(index, text)`` pairs, then ``on_done(seq,
tokens)`` once with the rest (their text cut where a stop string cut the answer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from .batching import Batch, Engine, Sequence, keep, merge
from .pipelines import stop_hold

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """A sequence with its callbacks and limits, as the scheduler holds it."""

    seq: Sequence
    on_text: Callable[[Sequence, list[tuple[int, str]]], None]
    on_done: Callable[[Sequence, list[tuple[int, str]]], None]
    deadline: float | None = None
    """time.monotonic() after which the row stops with finish_reason ``time``."""
    sent: int = 0
    """How many of ``seq.pieces`` were handed to on_text."""
    sent_chars: int = 0
    """Their length in characters."""
    admitted: float | None = None
    """time.perf_counter() when its prefill started (its queue time ends), for the metrics."""
    finished: float | None = None
    """time.perf_counter() when it left the batch (on_done)."""
    cancelled: bool = field(default=False, repr=False)


class Scheduler:
    """Admits, prefills, steps and retires rows; ``model_for(adapters)`` returns the model to run them on
    (loading evicted adapters, and never evicting one of ``adapters``)."""

    def __init__(
        self,
        engine: Engine,
        model_for: Callable[[list[str]], object],
        max_rows: int = 8,
        max_batch_tokens: int = 4096,
    ):
        self.engine = engine
        self.model_for = model_for
        self.max_rows = max_rows
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.batch: Batch | None = None
        self.steps = 0
        self._between: deque[tuple[Callable[[], object], Future]] = deque()
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="loraship-scheduler", daemon=True)
        self._thread.start()

    # -- what callers use --------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._wake:
            self.waiting.append(job)
            self._wake.notify()
        return job

    def between_steps(self, fn: Callable[[], object]) -> Future:
        """Run ``fn`` on the loop's thread between two steps (e.g. loading an adapter); its result or error
        arrives in the returned future."""
        future: Future = Future()
        with self._wake:
            self._between.append((fn, future))
            self._wake.notify()
        return future

    def cancel(self, job: Job) -> None:
        """The client went away: the row leaves at the next step boundary."""
        with self._wake:
            job.cancelled = True
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # -- the loop ------------------------------------------------------------------------------------
    def _cost(self, job: Job) -> int:
        return len(job.seq.prompt_ids) + job.seq.params.max_new_tokens

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit now, in arrival order (a job that does not fit waits; none overtakes it)."""
        taken, cost = [], sum(self._cost(j) for j in self.running)
        with self._wake:
            while self.waiting and len(self.running) + len(taken) < self.max_rows:
                job = self.waiting[0]
                if job.cancelled:
                    self.waiting.popleft()
                    self._finish(job, "cancelled")
                    continue
                if taken or self.running:
                    if cost + self._cost(job) > self.max_batch_tokens:
                        break
                taken.append(self.waiting.popleft())
                cost += self._cost(job)
        return taken

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self.waiting and self.batch is None and not self._between:
                    self._wake.wait()
                if self._stop:
                    break
            try:
                self._iteration()
            except Exception as exc:  # a failed step ends the rows in it, never the loop
                log.exception("decode step failed for %d rows", len(self.running))
                for job in self.running:
                    job.seq.error = exc
                    self._finish(job, "error")
                self.running, self.batch = [], None
        for job in [*self.running, *self.waiting]:
            self._finish(job, "cancelled")

    def _iteration(self) -> None:
        while self._between:
            fn, future = self._between.popleft()
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)
        self._retire_stopped()
        new = self._admit()
        adapters = [j.seq.adapter for j in self.running + new]
        if new:
            model = self.model_for(adapters)
            now = time.perf_counter()
            for job in new:
                job.admitted = now
            batch = self.engine.prefill(model, [j.seq for j in new])
            self.running += new
            if batch is not None:
                self.batch = batch if self.batch is None else merge(self.batch, batch)
        elif self.batch is not None:
            self.batch = self.engine.step(self.model_for(adapters), self.batch)
            self.steps += 1
        self._report()

    def _retire_stopped(self) -> None:
        """Cancelled and timed-out rows leave before the next step."""
        now = time.monotonic()
        gone = [j for j in self.running if j.cancelled or (j.deadline is not None and now >= j.deadline)]
        if not gone or self.batch is None:
            return
        for job in gone:
            reason = "cancelled" if job.cancelled else "time"
            log.info(
                "a row left the batch (%s) after %d of %d tokens; %d rows remain",
                reason, len(job.seq.tokens), job.seq.params.max_new_tokens, len(self.running) - 1,
            )  # fmt: skip
            self._finish(job, reason)
        stay = [i for i, seq in enumerate(self.batch.rows) if not seq.done]
        self.batch = keep(self.batch, stay)
        self.running = [j for j in self.running if not j.seq.done]

    def _report(self) -> None:
        for job in list(self.running):
            if job.seq.done:
                self.running.remove(job)
                job.finished = time.perf_counter()
                _call(job.on_done, job.seq, self._tokens(job, final=True))
                continue
            tokens = self._tokens(job, final=False)
            if tokens:
                _call(job.on_text, job.seq, tokens)

    @staticmethod
    def _tokens(job: Job, final: bool) -> list[tuple[int, str]]:
        """The tokens not yet reported whose text is settled: a token that may be the start of a stop
        string is held back (``final``: every token, its text cut where a stop string cut the answer)."""
        seq = job.seq
        limit = len(seq.text) if final else len(seq.text) - stop_hold(seq.stops)
        out = []
        while job.sent < len(seq.pieces):
            start = job.sent_chars
            end = start + len(seq.pieces[job.sent])
            if not final and end > limit:
                break
            if final and job.sent == len(seq.pieces) - 1:
                end = max(end, len(seq.text))  # an unfinished character at the very end is sent as it is
            out.append((job.sent, seq.text[start:end] if final else seq.pieces[job.sent]))
            job.sent, job.sent_chars = job.sent + 1, end
        return out

    def _finish(self, job: Job, reason: str) -> None:
        if job.seq.finish_reason is None:
            job.seq.finish_reason = reason
        if job in self.running:
            self.running.remove(job)
        job.finished = time.perf_counter()
        _call(job.on_done, job.seq, self._tokens(job, final=True))


def release_openmp_pool() -> None:
    """Free the calling thread's OpenMP thread pool: call it on the thread that loaded the model, once the
    scheduler's thread does the torch work.

    libgomp keeps a pool per thread that has run a parallel region; with more pooled threads than CPUs its
    threads spin a shorter while before they sleep, and every region waits longer for them to wake. Measured
    on this 2-core machine: the same matrix products on the scheduler's thread took 1.7x their time on the
    loading thread, and 1.0x once the loading thread had freed its pool; a one-row decode step through the
    async service went from 61 ms to 31 ms. ``omp_pause_resource_all`` (OpenMP 5.0) frees the calling thread's
    pool; it comes back if that thread runs a parallel region again. Best effort: a runtime without it is
    left as it is."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
        for lib in sorted(libs):
            ctypes.CDLL(lib).omp_pause_resource_all(1)  # omp_pause_soft
    except (OSError, AttributeError) as exc:
        log.debug("could not free the OpenMP pool: %s", exc)


def _call(callback, *args) -> None:
    """A caller's callback; one that fails is logged, and never stops the loop (the other rows go on)."""
    try:
        callback(*args)
    except Exception:
        log.exception("a row's callback failed")
