"""One timed request to the endpoint: send, read (streamed or not), classify the outcome.

A request's ``status`` is what happened to *that* request: the HTTP status, or the ``code`` in the
body of an HTTP 200 that carries an error (DJL's static batching answers a bad request in a batch
that way), or one of the client-side outcomes below. Nothing is retried and nothing is dropped.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field

import requests

CONNECTION_ERROR = "connection_error"  # refused, reset or closed before a reply (bad URL, dead server)
TIMEOUT = "timeout"  # no reply within --timeout
INCOMPLETE = "incomplete"  # a stream that broke off before its final line
BAD_REPLY = "bad_reply"  # a 200 whose body is not the expected JSON
CONNECT_TIMEOUT = 10.0


@dataclass
class RequestRecord:
    """One request as measured by the client; a line of requests.jsonl. Times are in seconds."""

    index: int  # order of sending within its phase and level
    phase: str  # "probe" (cold/warm adapter probe), "warmup" or "measure"
    level: str | None  # "concurrency=4" / "rate=2" for measured requests
    adapter: str  # the name sent; "__base__" for the base model
    stream: bool
    sent_at: float = 0.0  # seconds since the start of the run
    status: int | str = 0  # see the module docstring
    http_status: int | None = None
    ok: bool = False
    error: str | None = None
    input_tokens: int | None = None  # details.prompt_tokens
    output_tokens: int | None = None  # details.generated_tokens
    ttft: float | None = None  # streaming only: first token chunk's arrival
    e2e: float | None = None  # last byte of the reply (errors included)
    itl: list[float] = field(default_factory=list)  # streaming: gaps between token chunks' arrivals
    chunks: int = 0  # token chunks received (a chunk may hold several tokens)
    finish_reason: str | None = None
    server_seconds: float | None = None  # details.inference_seconds
    max_new_tokens: int | None = None  # asked for (min_new_tokens is the same); None: the client's default

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (output_tokens - 1), as vLLM has it."""
        if not self.ok or self.ttft is None or self.e2e is None or not self.output_tokens or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tpot"] = self.tpot
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RequestRecord:
        d = {k: v for k, v in d.items() if k != "tpot"}
        return cls(**d)


class Client:
    """Sends generation requests with one HTTP session per thread (keep-alive, like a real client)."""

    def __init__(
        self,
        url: str,
        endpoint: str = "/invocations",
        *,
        max_new_tokens: int = 64,
        stream: bool = False,
        timeout: float = 300.0,
    ):
        self.url = url.rstrip("/") + "/" + endpoint.lstrip("/")
        self.max_new_tokens = max_new_tokens
        self.stream = stream
        self.timeout = timeout
        self._local = threading.local()

    def body(self, prompt: str, adapter: str, max_new_tokens: int | None = None) -> dict:
        """min_new_tokens = max_new_tokens, so a request asks for exactly the work it names."""
        tokens = max_new_tokens or self.max_new_tokens
        return {
            "inputs": prompt,
            "adapters": adapter,
            "stream": self.stream,
            "parameters": {"max_new_tokens": tokens, "min_new_tokens": tokens, "details": True},
        }

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def send(self, rec: RequestRecord, prompt: str, t0: float) -> RequestRecord:
        """Fill ``rec`` with the outcome of one request; ``t0`` is the run's perf_counter origin."""
        start = time.perf_counter()
        rec.sent_at = start - t0
        try:
            resp = self._session().post(
                self.url,
                json=self.body(prompt, rec.adapter, rec.max_new_tokens),
                stream=rec.stream,
                timeout=(CONNECT_TIMEOUT, self.timeout),
            )
            rec.http_status = resp.status_code
            streamed = rec.stream and resp.status_code == 200 and "jsonlines" in resp.headers.get("content-type", "")
            if streamed:
                self._read_stream(rec, resp, start)
            else:
                raw = resp.content
                rec.e2e = time.perf_counter() - start
                self._read_body(rec, raw)
        except requests.Timeout as exc:
            rec.status, rec.error = TIMEOUT, _short(exc)
        except requests.ConnectionError as exc:
            rec.status, rec.error = INCOMPLETE if rec.chunks else CONNECTION_ERROR, _short(exc)
        except requests.RequestException as exc:  # e.g. ChunkedEncodingError: the stream broke off
            rec.status, rec.error = INCOMPLETE, _short(exc)
        if rec.e2e is None:
            rec.e2e = time.perf_counter() - start
        rec.ok = rec.status == 200
        return rec

    def _read_body(self, rec: RequestRecord, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if rec.http_status != 200:
            rec.status = rec.http_status
            rec.error = body.get("error") if isinstance(body, dict) else raw[:200].decode("utf-8", "replace")
        elif isinstance(body, dict) and "error" in body:
            rec.status = _error_code(body)
            rec.error = str(body["error"])
        elif isinstance(body, dict) and "generated_text" in body:
            rec.status = 200
            _take_details(rec, body)
        else:
            rec.status, rec.error = BAD_REPLY, f"unexpected reply: {raw[:200].decode('utf-8', 'replace')}"

    def _read_stream(self, rec: RequestRecord, resp: requests.Response, start: float) -> None:
        """JSON lines: each line is timed when its newline arrives."""
        buf, last_token, final = b"", None, None
        for data in resp.iter_content(chunk_size=None):
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                now = time.perf_counter()
                try:
                    obj = json.loads(line)
                except ValueError:
                    rec.status, rec.error = BAD_REPLY, f"unparsable stream line: {line[:200]!r}"
                    return
                if "token" in obj:
                    rec.chunks += 1
                    if last_token is None:
                        rec.ttft = now - start
                    else:
                        rec.itl.append(now - last_token)
                    last_token = now
                if "error" in obj:
                    rec.e2e = now - start
                    rec.status, rec.error = _error_code(obj), str(obj["error"])
                    return
                elif "generated_text" in obj:
                    final = obj
                    rec.e2e = now - start
                    if rec.ttft is None:  # nothing streamed before the final line
                        rec.ttft = rec.e2e
        if final is None:
            rec.status, rec.error = INCOMPLETE, "the stream ended without its final line"
        else:
            rec.status = 200
            _take_details(rec, final)


def _take_details(rec: RequestRecord, body: dict) -> None:
    details = body.get("details") or {}
    rec.output_tokens = details.get("generated_tokens")
    rec.input_tokens = details.get("prompt_tokens")
    rec.finish_reason = details.get("finish_reason")
    rec.server_seconds = details.get("inference_seconds")


def _error_code(body: dict) -> int | str:
    code = body.get("code")
    return code if isinstance(code, int) else "error"


def _short(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."
