"""Per-request metrics through DJL Serving's own channel: ``[METRICS]`` lines on the worker's stdout.

DJL's Java side reads every worker line that contains ``[METRICS]``, parses the rest with
``ai.djl.metric.Metric.parse`` (``NAME.UNIT:VALUE|#DIMENSION:VALUE|TYPE``) and logs it to its
``model_metric`` logger; with ``SERVING_PROMETHEUS=true`` real DJL Serving, and loraship's host, expose
it at ``/server/metrics`` in Prometheus text format. Nothing in ``djl_python`` writes these lines: this
module does, through ``logging`` (the worker's root handler writes ``INFO::...`` to stdout and
flushes each record).

What DJL makes of a line (measured on DJL Serving 0.36.0, /work/notes/djl_metrics.md):

- only the first dimension becomes a label, and its name is fixed when the metric is first seen: every
  metric here has exactly one, ``Adapter`` (``__base__`` for the base model);
- a label value must not contain ``,``, ``:`` or ``|`` (they split the line), and a value must match
  ``[0-9\\-,.e]+`` (no ``+``, ``inf`` or ``nan``): such lines are dropped;
- the unit must be a name of DJL's ``Unit`` enum (there is no ``Seconds``): durations are sent as
  histograms with unit ``None`` and values in seconds, so that Prometheus' default buckets (0.005 s to
  10 s) apply; a counter (unit ``Count``) is an increment, and Prometheus names it ``<name>_total``.

A metric write never fails a request: every public method swallows its own errors (the first is logged).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)
# The lines are data, not diagnostics: they are emitted at INFO whatever level the root logger is set to
# (the record still goes to the root's handler, which DJL's worker points at stdout).
_lines = logging.getLogger(__name__ + ".lines")
_lines.setLevel(logging.INFO)

MARKER = "[METRICS]"
LABEL = "Adapter"
BASE = "__base__"
UNKNOWN = "__unknown__"
"""The label of a request refused before its adapter was resolved (bad body, unknown adapter, over a limit)."""
MIXED = "__mixed__"
"""The label of a request whose list of inputs names more than one adapter (its rows keep their own)."""

REQUESTS = "LorashipRequests"
"""Counter per request and status code: ``LorashipRequests_200``, ``LorashipRequests_400``, ..."""
QUEUE = "LorashipQueueSeconds"
TTFT = "LorashipTimeToFirstTokenSeconds"
INFERENCE = "LorashipInferenceSeconds"
OUTPUT_TOKENS = "LorashipOutputTokens"
TOKENS_PER_SECOND = "LorashipTokensPerSecond"
ADAPTER_LOAD = "LorashipAdapterLoadSeconds"
ADAPTER_RESIDENT = "LorashipAdapterResident"

UNITS = ("Count", "None")
KINDS = ("c", "g", "h")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE = re.compile(r"[,:|#\s]")


def label_value(adapter: str | None) -> str:
    """The ``Adapter`` label of an adapter name ('' is the base); characters DJL would split on become ``_``."""
    return _UNSAFE.sub("_", adapter or BASE)


def request_label(adapters: Iterable[str]) -> str:
    """One label for a request: its adapter, or ``__mixed__`` when its inputs name several."""
    names = {label_value(a) for a in adapters}
    return names.pop() if len(names) == 1 else MIXED if names else UNKNOWN


def format_value(value: float) -> str:
    """A number in the form DJL's parser accepts: fixed point (no exponent, so no ``+``), at most 6 decimals."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    if isinstance(value, int):
        return str(value)
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def format_line(name: str, unit: str, value: float, adapter: str, kind: str) -> str:
    """``NAME.UNIT:VALUE|#Adapter:LABEL|KIND``: one metric as DJL's ``Metric.parse`` reads it."""
    if not _NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    if unit not in UNITS or kind not in KINDS:
        raise ValueError(f"unit {unit!r} / type {kind!r} not supported")
    return f"{name}.{unit}:{format_value(value)}|#{LABEL}:{label_value(adapter)}|{kind}"


class Metrics:
    """Writes the handler's metrics; ``enabled=False`` (``option.metrics=false``) writes nothing.

    ``write`` receives each batch of lines (without the marker); by default they go to the log, which DJL
    reads; tests set a list's ``extend``.
    """

    def __init__(self, enabled: bool = True, write=None):
        self.enabled = enabled
        self.write = write or _log_lines
        self._failed = False
        self._lock = threading.Lock()

    # -- static batching (service.py) --------------------------------------------------------------
    def generated(self, adapters: list[str], results, received: float) -> None:
        """The rows of one ``generate`` call, just returned; ``received`` is ``time.monotonic()`` when the
        handler got their requests. Queue is until the call started; no TTFT (generate returns whole)."""
        if not self.enabled:
            return
        with self._guard():
            started = time.monotonic() - max((r.seconds for r in results), default=0.0)
            lines = []
            for adapter, res in zip(adapters, results):
                lines += self._row(adapter, started - received, None, res.seconds, res.generated_tokens)
            self._emit(lines)

    def replied(self, replies: list[tuple[int, object]], parsed: dict) -> None:
        """Static batching's replies: ``replies[i]`` is request i's (status, body), ``parsed[i]`` its
        ``(ParsedRequest, ...)`` when it was parsed and admitted (else it is counted as ``__unknown__``)."""
        if not self.enabled:
            return
        with self._guard():
            self._emit(
                [
                    self._request(code, parsed[i][0].adapters if i in parsed else ())
                    for i, (code, _) in enumerate(replies)
                ]
            )

    def refused(self, code: int) -> None:
        """A request answered with an error before any of it was scheduled."""
        if not self.enabled:
            return
        with self._guard():
            self._emit([self._request(code, ())])

    def finished(self, req, code: int, jobs) -> None:
        """A continuous-batching request's reply: its status, and for each of its rows that reached the
        running batch its queue time, TTFT, inference time and tokens (from the scheduler's timestamps)."""
        if not self.enabled:
            return
        with self._guard():
            lines = [self._request(code, req.adapters)]
            for job in jobs:
                seq = job.seq
                if job.admitted is None:
                    continue
                end = job.finished if job.finished is not None else time.perf_counter()
                ttft = seq.first_token_at - seq.started if seq.first_token_at is not None else None
                lines += self._row(seq.adapter, job.admitted - seq.started, ttft, end - job.admitted, len(seq.tokens))
            self._emit(lines)

    # -- adapters (adapters.py) --------------------------------------------------------------------
    def adapter_loaded(self, name: str, seconds: float) -> None:
        """An adapter's weights went into the model: registered, updated, or reloaded after eviction."""
        if not self.enabled:
            return
        with self._guard():
            self._emit(
                [
                    format_line(ADAPTER_LOAD, "None", max(seconds, 0.0), name, "h"),
                    format_line(ADAPTER_RESIDENT, "Count", 1, name, "g"),
                ]
            )

    def adapter_unloaded(self, name: str) -> None:
        """An adapter left memory (evicted, updated or unregistered): its resident gauge drops to 0."""
        if not self.enabled:
            return
        with self._guard():
            self._emit([format_line(ADAPTER_RESIDENT, "Count", 0, name, "g")])

    # -- internals ---------------------------------------------------------------------------------
    def _request(self, code: int, adapters) -> str:
        label = request_label(adapters) if adapters else UNKNOWN
        return format_line(f"{REQUESTS}_{int(code)}", "Count", 1, label, "c")

    def _row(self, adapter: str, queued: float | None, ttft: float | None, seconds: float, tokens: int) -> list[str]:
        lines = []
        if queued is not None:
            lines.append(format_line(QUEUE, "None", max(queued, 0.0), adapter, "h"))
        if ttft is not None:
            lines.append(format_line(TTFT, "None", max(ttft, 0.0), adapter, "h"))
        seconds = max(seconds, 0.0)
        lines.append(format_line(INFERENCE, "None", seconds, adapter, "h"))
        lines.append(format_line(OUTPUT_TOKENS, "Count", max(int(tokens), 0), adapter, "c"))
        if tokens > 0 and seconds > 0:
            lines.append(format_line(TOKENS_PER_SECOND, "None", tokens / seconds, adapter, "h"))
        return lines

    def _emit(self, lines: list[str]) -> None:
        if lines:
            self.write(lines)

    def _guard(self):
        return _Guard(self)


class _Guard:
    """Swallows a metric's failure (a request must never fail for it); logs the first one only."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception):
            return False
        with self.metrics._lock:
            first, self.metrics._failed = not self.metrics._failed, True
        if first:
            log.warning("writing a metric failed (later failures are not logged): %r", exc)
        return True


def _log_lines(lines: list[str]) -> None:
    # One record for all of them: one write and one flush, never interleaved with another thread's lines.
    _lines.info("\n".join(MARKER + line for line in lines))
