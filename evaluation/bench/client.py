"""One timed request to the endpoint: send, read (streamed or not), classify the outcome.

Three request schemas (``Api``): DJL LMI's (``lmi``: ``{"inputs", "parameters", "adapters"}``, replies with
``details``, streams as JSON lines or server-sent events), OpenAI's chat completions (``openai-chat``) and
completions (``openai-completions``: streams as server-sent events ending with ``data: [DONE]``, token counts
from ``usage``; an adapter is the request's ``model``). Two transports: HTTP to a URL (``HttpTransport``), or a
SageMaker endpoint through boto3's ``sagemaker-runtime`` client (``SageMakerTransport``: SigV4-signed
InvokeEndpoint and InvokeEndpointWithResponseStream, whose event stream's payload parts carry the same lines).

A request's ``status`` is what happened to *that* request: the HTTP status (a SageMaker ModelError's original
status from the container), or the ``code`` in the body of an HTTP 200 that carries an error (DJL's static
batching answers a bad request in a batch that way), or one of the client-side outcomes below. Nothing is
retried and nothing is dropped.
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
    input_tokens: int | None = None  # the server's count: details.prompt_tokens, usage.prompt_tokens
    output_tokens: int | None = None  # details.generated_tokens, usage.completion_tokens (or see tokens_from)
    ttft: float | None = None  # streaming only: first token chunk's arrival
    e2e: float | None = None  # last byte of the reply (errors included)
    itl: list[float] = field(default_factory=list)  # streaming: gaps between token chunks' arrivals
    chunks: int = 0  # token chunks received (a chunk may hold several tokens)
    finish_reason: str | None = None
    server_seconds: float | None = None  # details.inference_seconds
    max_new_tokens: int | None = None  # asked for (min_new_tokens is the same); None: the client's default
    counted_prompt_tokens: int | None = None  # the prompt's tokens by the client's tokenizer (before any template)
    prefix: int | None = None  # the shared prefix it starts with
    planned_at: float | None = None  # open loop: its arrival in the schedule, seconds after the level's start
    tokens_from: str | None = None  # where output_tokens came from: "server", "tokenizer" (counted here), "chunks"

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


APIS = ("lmi", "openai-chat", "openai-completions")
PATHS = {"lmi": "/invocations", "openai-chat": "/v1/chat/completions", "openai-completions": "/v1/completions"}
BASE = "__base__"


def merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` laid over it; nested objects are merged, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class _Stream:
    """One streamed reply: its lines (JSON lines, or server-sent events' ``data:`` lines) timed as they arrive."""

    def __init__(self, api: Api, rec: RequestRecord, start: float):
        self.api, self.rec, self.start = api, rec, start
        self.buf = b""
        self.last_token: float | None = None
        self.text: list[str] = []
        self.finished = False  # the reply's end was seen (LMI's final line, OpenAI's finish_reason)
        self.done = False  # nothing more to read: [DONE], an error, or a bad line
        self.failed = False

    def token(self, now: float, text: str | None) -> None:
        self.rec.chunks += 1
        if self.last_token is None:
            self.rec.ttft = now - self.start
        else:
            self.rec.itl.append(now - self.last_token)
        self.last_token = now
        if text:
            self.text.append(text)

    def end(self, now: float) -> None:
        self.finished = True
        if self.rec.e2e is None:
            self.rec.e2e = now - self.start

    def fail(self, now: float, status, error: str) -> None:
        self.rec.status, self.rec.error = status, error
        self.rec.e2e = now - self.start
        self.failed = self.done = True

    def feed(self, data: bytes, now: float) -> None:
        """Bytes as they arrived at ``now``; each complete line is handled (lines after the end are not)."""
        self.buf += data
        while b"\n" in self.buf and not self.done:
            line, self.buf = self.buf.split(b"\n", 1)
            self._line(line.strip(), now)

    def _line(self, line: bytes, now: float) -> None:
        if not line or line.startswith(b":") or line.startswith((b"event:", b"id:", b"retry:")):
            return
        if line.startswith(b"data:"):
            line = line[5:].strip()
            if line == b"[DONE]":
                self.end(now)
                self.done = True
                return
        try:
            obj = json.loads(line)
        except ValueError:
            self.fail(now, BAD_REPLY, f"unparsable stream line: {line[:200]!r}")
            return
        if not isinstance(obj, dict):
            self.fail(now, BAD_REPLY, f"unexpected stream line: {line[:200]!r}")
            return
        self.api.event(self, obj, now)

    def close(self, now: float) -> None:
        """The reply's body ended (or the event stream did)."""
        if self.buf.strip() and not self.done:
            self._line(self.buf.strip(), now)
        if self.failed:
            return
        if not self.finished:
            self.rec.status, self.rec.error = INCOMPLETE, "the stream ended without its final line"
            return
        self.rec.status = 200
        self.api.fill_tokens(self.rec, "".join(self.text))


class Api:
    """A request schema: the body sent and how a reply (whole or streamed) is read."""

    name = ""

    def __init__(self, model: str | None = None, extra: dict | None = None, count=None):
        """``model``: the base model's name (OpenAI's ``model`` for ``__base__``); ``extra`` is laid over every
        body; ``count(text)`` counts output tokens a server does not report."""
        self.model, self.extra, self.count = model, extra or {}, count

    @property
    def path(self) -> str:
        return PATHS[self.name]

    def body(self, prompt: str, adapter: str, max_new_tokens: int, stream: bool) -> dict:
        return merge(self._body(prompt, adapter, max_new_tokens, stream), self.extra)

    def fill_tokens(self, rec: RequestRecord, text: str) -> None:
        """Output tokens as the server counted them; else by the tokenizer; else, streamed, one per chunk (what
        llama.cpp's server sends, which reports no usage while streaming)."""
        if rec.output_tokens is not None:
            rec.tokens_from = "server"
        elif self.count is not None and rec.status == 200:
            rec.output_tokens, rec.tokens_from = self.count(text), "tokenizer"
        elif rec.stream and rec.status == 200 and rec.chunks:
            rec.output_tokens, rec.tokens_from = rec.chunks, "chunks"

    def reply(self, rec: RequestRecord, raw: bytes) -> None:
        """A whole reply's body."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if rec.http_status != 200:
            rec.status = rec.http_status
            rec.error = _error_text(body) or raw[:200].decode("utf-8", "replace")
            return
        if not isinstance(body, dict):
            rec.status, rec.error = BAD_REPLY, f"unexpected reply: {raw[:200].decode('utf-8', 'replace')}"
            return
        if "error" in body:
            rec.status, rec.error = _error_code(body), _error_text(body)
            return
        text = self._whole(rec, body)
        if text is None:
            rec.status, rec.error = BAD_REPLY, f"unexpected reply: {raw[:200].decode('utf-8', 'replace')}"
            return
        rec.status = 200
        self.fill_tokens(rec, text)

    def _body(self, prompt, adapter, max_new_tokens, stream) -> dict:
        raise NotImplementedError

    def _whole(self, rec: RequestRecord, body: dict) -> str | None:
        """The generated text of a whole reply (None: not this schema's reply), its figures into ``rec``."""
        raise NotImplementedError

    def event(self, stream: _Stream, obj: dict, now: float) -> None:
        raise NotImplementedError


class LmiApi(Api):
    """DJL LMI: ``min_new_tokens = max_new_tokens`` so a request asks for exactly the work it names."""

    name = "lmi"

    def _body(self, prompt, adapter, max_new_tokens, stream) -> dict:
        return {
            "inputs": prompt,
            "adapters": adapter,
            "stream": stream,
            "parameters": {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens, "details": True},
        }

    def _whole(self, rec, body):
        if "generated_text" not in body:
            return None
        _take_details(rec, body)
        return body["generated_text"]

    def event(self, stream, obj, now):
        if "token" in obj:
            token = obj["token"]
            stream.token(now, token.get("text") if isinstance(token, dict) else None)
        if "error" in obj:
            stream.fail(now, _error_code(obj), _error_text(obj))
        elif "generated_text" in obj:
            stream.end(now)
            stream.done = True
            if stream.rec.ttft is None:  # nothing streamed before the final line
                stream.rec.ttft = stream.rec.e2e
            _take_details(stream.rec, obj)


class OpenAIApi(Api):
    """OpenAI's chat completions or completions; greedy (``temperature`` 0, as vLLM's benchmark sends) unless
    ``extra`` says otherwise; a streamed request asks for ``usage`` in its last chunk (``stream_options``)."""

    def __init__(self, name: str, model=None, extra=None, count=None, min_tokens: bool = False):
        super().__init__(model, extra, count)
        self.name = name
        self.chat = name == "openai-chat"
        self.min_tokens = min_tokens

    def _body(self, prompt, adapter, max_new_tokens, stream) -> dict:
        body = {}
        model = self.model if adapter == BASE else adapter
        if model:
            body["model"] = model
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(max_tokens=max_new_tokens, temperature=0.0, stream=stream)
        if self.min_tokens:
            body["min_tokens"] = max_new_tokens
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _usage(self, rec: RequestRecord, obj: dict) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                rec.output_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                rec.input_tokens = usage["prompt_tokens"]

    def _whole(self, rec, body):
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        rec.finish_reason = choice.get("finish_reason")
        self._usage(rec, body)
        text = (choice.get("message") or {}).get("content") if self.chat else choice.get("text")
        return text or ""

    def event(self, stream, obj, now):
        if "error" in obj:
            stream.fail(now, _error_code(obj), _error_text(obj))
            return
        for choice in (obj.get("choices") or [])[:1]:
            if not isinstance(choice, dict):
                continue
            if self.chat:
                delta = choice.get("delta") or {}
                piece = delta.get("content") or delta.get("reasoning_content")
            else:
                piece = choice.get("text")
            if piece:
                stream.token(now, piece)
            if choice.get("finish_reason"):
                stream.rec.finish_reason = choice["finish_reason"]
                stream.end(now)
        self._usage(stream.rec, obj)


def make_api(name: str, model: str | None = None, extra: dict | None = None, count=None, min_tokens=False) -> Api:
    if name == "lmi":
        return LmiApi(model, extra, count)
    if name in APIS:
        return OpenAIApi(name, model, extra, count, min_tokens)
    raise ValueError(f"unknown API {name!r}; known: {', '.join(APIS)}")


class HttpTransport:
    """POSTs to a URL with one HTTP session per thread (keep-alive, like a real client)."""

    def __init__(self, url: str, timeout: float = 300.0):
        self.url = url
        self.timeout = timeout
        self._local = threading.local()

    def describe(self) -> dict:
        return {"kind": "http", "url": self.url}

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def exchange(self, rec: RequestRecord, body: dict, api: Api, start: float) -> None:
        stream = None
        try:
            resp = self._session().post(self.url, json=body, stream=rec.stream, timeout=(CONNECT_TIMEOUT, self.timeout))
            rec.http_status = resp.status_code
            kind = resp.headers.get("content-type", "")
            streamed = rec.stream and resp.status_code == 200 and any(k in kind for k in STREAM_TYPES)
            if streamed:
                stream = _Stream(api, rec, start)
                for data in resp.iter_content(chunk_size=None):
                    stream.feed(data, time.perf_counter())
                stream.close(time.perf_counter())
            else:
                raw = resp.content
                rec.e2e = time.perf_counter() - start
                api.reply(rec, raw)
        except requests.Timeout as exc:
            rec.status, rec.error = TIMEOUT, _short(exc)
        except requests.ConnectionError as exc:
            rec.status, rec.error = INCOMPLETE if rec.chunks else CONNECTION_ERROR, _short(exc)
        except requests.RequestException as exc:  # e.g. ChunkedEncodingError: the stream broke off
            rec.status, rec.error = INCOMPLETE, _short(exc)


STREAM_TYPES = ("jsonlines", "event-stream", "ndjson")


class SageMakerTransport:
    """A SageMaker endpoint through boto3's ``sagemaker-runtime`` client: SigV4-signed with botocore's credential
    chain, no retries (a bench counts what happened), one connection pool shared by the threads (boto3 clients
    are thread-safe). A streamed request is InvokeEndpointWithResponseStream: its ``PayloadPart`` events carry
    the container's stream, split anywhere, so lines are timed when their last byte arrives."""

    def __init__(
        self,
        endpoint: str,
        region: str | None = None,
        inference_component: str | None = None,
        target_variant: str | None = None,
        timeout: float = 300.0,
        pool: int = 10,
        endpoint_url: str | None = None,
    ):
        import boto3
        from botocore.config import Config

        self.endpoint, self.inference_component, self.target_variant = endpoint, inference_component, target_variant
        config = Config(
            read_timeout=timeout,
            connect_timeout=CONNECT_TIMEOUT,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max(10, pool),
        )
        self.client = boto3.session.Session().client(
            "sagemaker-runtime", region_name=region, config=config, endpoint_url=endpoint_url
        )
        self.region = self.client.meta.region_name

    def describe(self) -> dict:
        return {
            "kind": "sagemaker",
            "endpoint": self.endpoint,
            "region": self.region,
            "inference_component": self.inference_component,
            "target_variant": self.target_variant,
            "url": self.client.meta.endpoint_url,
        }

    def _args(self, body: dict) -> dict:
        args = {"EndpointName": self.endpoint, "Body": json.dumps(body).encode(), "ContentType": "application/json"}
        if self.inference_component:
            args["InferenceComponentName"] = self.inference_component
        if self.target_variant:
            args["TargetVariant"] = self.target_variant
        return args

    def exchange(self, rec: RequestRecord, body: dict, api: Api, start: float) -> None:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            EventStreamError,
            ReadTimeoutError,
        )

        try:
            if rec.stream:
                resp = self.client.invoke_endpoint_with_response_stream(**self._args(body))
                rec.http_status = resp["ResponseMetadata"]["HTTPStatusCode"]
                stream = _Stream(api, rec, start)
                for event in resp["Body"]:
                    part = event.get("PayloadPart")
                    if part:
                        stream.feed(part.get("Bytes") or b"", time.perf_counter())
                stream.close(time.perf_counter())
            else:
                resp = self.client.invoke_endpoint(Accept="application/json", **self._args(body))
                rec.http_status = resp["ResponseMetadata"]["HTTPStatusCode"]
                raw = resp["Body"].read()
                rec.e2e = time.perf_counter() - start
                api.reply(rec, raw)
        except EventStreamError as exc:  # ModelStreamError / InternalStreamFailure in the event stream
            error = exc.response.get("Error", {})
            rec.status = INCOMPLETE if rec.chunks else error.get("Code") or "error"
            rec.error = _short_text(f"{error.get('Code')}: {error.get('Message')}")
        except ClientError as exc:  # the service's answer: 4xx/5xx, a ModelError with the container's status
            error, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
            rec.http_status = meta.get("HTTPStatusCode")
            original = exc.response.get("OriginalStatusCode")
            rec.status = original if isinstance(original, int) else rec.http_status or "error"
            rec.error = _short_text(
                f"{error.get('Code')}: {exc.response.get('OriginalMessage') or error.get('Message')}"
            )
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            rec.status, rec.error = TIMEOUT, _short(exc)
        except (EndpointConnectionError, ConnectionClosedError) as exc:
            rec.status, rec.error = INCOMPLETE if rec.chunks else CONNECTION_ERROR, _short(exc)
        except BotoCoreError as exc:
            rec.status, rec.error = INCOMPLETE if rec.chunks else CONNECTION_ERROR, _short(exc)


class Client:
    """Sends generation requests in one schema (``api``) over one transport; thread-safe."""

    def __init__(self, api: Api, transport, *, max_new_tokens: int = 64, stream: bool = False):
        self.api, self.transport = api, transport
        self.max_new_tokens = max_new_tokens
        self.stream = stream

    @classmethod
    def http(cls, url: str, endpoint: str | None = None, api: str = "lmi", *, timeout: float = 300.0, **kwargs):
        """A client of ``url`` + ``endpoint`` (default: the API's own path)."""
        schema = make_api(api, kwargs.pop("model", None), kwargs.pop("extra", None), kwargs.pop("count", None))
        path = endpoint or schema.path
        return cls(schema, HttpTransport(url.rstrip("/") + "/" + path.lstrip("/"), timeout), **kwargs)

    def body(self, prompt: str, adapter: str, max_new_tokens: int | None = None, stream: bool | None = None) -> dict:
        return self.api.body(
            prompt, adapter, max_new_tokens or self.max_new_tokens, self.stream if stream is None else stream
        )

    def send(self, rec: RequestRecord, prompt: str, t0: float) -> RequestRecord:
        """Fill ``rec`` with the outcome of one request; ``t0`` is the run's perf_counter origin."""
        start = time.perf_counter()
        rec.sent_at = start - t0
        self.transport.exchange(rec, self.body(prompt, rec.adapter, rec.max_new_tokens, rec.stream), self.api, start)
        if rec.e2e is None:
            rec.e2e = time.perf_counter() - start
        rec.ok = rec.status == 200
        return rec


def _take_details(rec: RequestRecord, body: dict) -> None:
    details = body.get("details") or {}
    rec.output_tokens = details.get("generated_tokens")
    rec.input_tokens = details.get("prompt_tokens")
    rec.finish_reason = details.get("finish_reason")
    rec.server_seconds = details.get("inference_seconds")


def _error_code(body: dict) -> int | str:
    code = body.get("code")
    if not isinstance(code, int) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
    return code if isinstance(code, int) else "error"


def _error_text(body) -> str | None:
    """The message of an error body: LMI's ``{"error": "..."}``, OpenAI's ``{"error": {"message": ...}}``,
    FastAPI's ``{"detail": ...}`` or ``{"message": ...}``."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error is not None:
        return str(error)
    for key in ("message", "detail"):
        if body.get(key) is not None:
            return str(body[key])
    return None


def _short_text(text: str) -> str:
    return text if len(text) <= 300 else text[:297] + "..."


def _short(exc: Exception) -> str:
    return _short_text(f"{type(exc).__name__}: {exc}")
