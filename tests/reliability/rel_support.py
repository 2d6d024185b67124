"""Helpers for the reliability suite: raw HTTP, request strategies, worker processes, log checks."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

#: Every client call in this suite gives up after this long: a slower answer counts as a hang.
HANG_SECONDS = 60
# The shared server's limits: small on purpose, so overload and size limits are reached with few requests.
JOB_QUEUE_SIZE = 8
MAX_REQUEST_SIZE = 64 * 1024
PREDICT_TIMEOUT = 10  # seconds; slow requests in the suite sleep well below it, or well above

# A custom pipeline written into the model dir: an item "SLEEP:<seconds>" holds the worker that long
# (in decode_request, inside the Python worker) before generating as the instruction pipeline does.
# It first appends a line to sleeps-started in its working directory, the model dir.
SLEEPS_STARTED = "sleeps-started"
SLOW_PIPELINE = f'''
import time

from handler.pipelines.instruction import InstructionTextGenerationPipeline


class Slow(InstructionTextGenerationPipeline):
    def decode_request(self, item):
        seconds = item.split(":", 1)[1] if isinstance(item, str) and item.startswith("SLEEP:") else ""
        if seconds.replace(".", "", 1).isdigit():
            with open("{SLEEPS_STARTED}", "a") as f:
                f.write(seconds + "\\n")
            time.sleep(float(seconds))
        return super().decode_request(item)
'''


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes
    seconds: float

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def send(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = HANG_SECONDS,
) -> Reply:
    """One request over a fresh connection with http.client: the path and query go out byte for byte."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.monotonic() - start)
    finally:
        conn.close()


def invoke(url: str, body, headers: dict | None = None, query: str = "", timeout: float = HANG_SECONDS) -> Reply:
    data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    path = "/invocations" + (f"?{query}" if query else "")
    return send(url, "POST", path, data, {"content-type": "application/json", **(headers or {})}, timeout)


def ping(url: str, timeout: float = 5) -> int:
    try:
        return send(url, "GET", "/ping", timeout=timeout).status
    except OSError:
        return 0


def wait_healthy(url: str, timeout: float = 180) -> float:
    """Seconds until /ping answers 200 (raises after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if ping(url) == 200:
            return time.monotonic() - start
        time.sleep(0.2)
    raise TimeoutError(f"/ping did not answer 200 within {timeout:.0f}s")


def is_json_error(reply: Reply) -> bool:
    """A JSON object that says what went wrong: the handler's {"error": ...} or the host's {"message": ...},
    or OpenAI's error object {"error": {"message", "code", ...}} (a body with messages is a chat request)."""
    try:
        body = reply.json()
    except ValueError:
        return False
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    return isinstance(body, dict) and isinstance(body.get("error", body.get("message")), str) and "code" in body


def generate(url: str, prompt: str, adapter: str = "", tokens: int = 4, **kw) -> str:
    """Greedy text for one prompt; fails the test on anything but 200."""
    r = invoke(
        url, {"inputs": prompt, "adapters": adapter or "__base__", "parameters": {"max_new_tokens": tokens}}, **kw
    )
    assert r.status == 200, (r.status, r.text)
    return r.json()["generated_text"]


class Hold:
    """A request that holds the worker for ``seconds``; started once the worker is inside it."""

    def __init__(self, url: str, model_dir: Path, seconds: float):
        marker = model_dir / SLEEPS_STARTED
        before = marker.read_text().count("\n") if marker.exists() else 0
        self.reply: Reply | None = None
        self.done: float | None = None
        self.thread = threading.Thread(target=self._run, args=(url, seconds), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + HANG_SECONDS
        while not (marker.exists() and marker.read_text().count("\n") > before):
            assert time.monotonic() < deadline and self.thread.is_alive(), "the worker never started the slow request"
            time.sleep(0.02)

    def _run(self, url, seconds):
        self.reply = invoke(url, {"inputs": f"SLEEP:{seconds}"}, timeout=HANG_SECONDS + seconds)
        self.done = time.monotonic()

    def join(self) -> Reply:
        self.thread.join(HANG_SECONDS * 3)
        assert self.reply is not None, "the slow request got no reply"
        return self.reply


def stream_many(url: str, n: int) -> list:
    """Short streamed requests back to back; each must end with its final line (bodies that are not
    complete JSON lines, status 0 or a timeout mean the worker's byte stream lost its framing)."""
    bad = []
    for i in range(n):
        body = {
            "inputs": "?" if i % 2 else "What is SageMaker?",
            "stream": True,
            "parameters": {"max_new_tokens": 1 + i % 4},
        }
        try:
            reply = invoke(url, body, timeout=30)
            lines = [json.loads(line) for line in reply.body.splitlines() if line.strip()]
            if reply.status != 200 or not lines or "generated_text" not in lines[-1]:
                bad.append((i, reply.status, reply.text[:200]))
        except Exception as exc:  # noqa: BLE001 - every way of failing counts
            bad.append((i, type(exc).__name__, str(exc)[:200]))
    return bad


def worker_pids(server_pid: int) -> list[int]:
    """Python workers of one server: children of its JVM that run djl_python_engine.py."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server_pid and b"djl_python_engine.py" in cmdline:
            pids.append(int(proc.name))
    return pids


def kill_worker(server_pid: int) -> int:
    pids = worker_pids(server_pid)
    assert len(pids) == 1, f"expected one Python worker under JVM {server_pid}, found {pids}"
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            addr, hex_port = cols[1].split(":")
            if int(hex_port, 16) != port or cols[3] != "0A":  # 0A: LISTEN
                continue
            if width == 8:
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
            else:
                words = [bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, 32, 8)]
                raw = b"".join(words)
                found.add(
                    "::ffff:" + ".".join(map(str, raw[12:])) if raw[:12] == b"\0" * 10 + b"\xff\xff" else raw.hex()
                )
    return found


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# ---- request strategies --------------------------------------------------------------------------

KNOWN_ADAPTERS = ["alpha", "beta"]
adapter_names = st.one_of(
    st.sampled_from(
        KNOWN_ADAPTERS
        + ["", "__base__", " __base__ ", "nope", "ALPHA", "../alpha", "lora_", "a" * 300, "alpha\x00", "\u00e9t\u00e9"]
    ),
    st.text(max_size=20),
)
texts = st.one_of(
    st.sampled_from(
        [
            "What is Amazon SageMaker?",
            "",
            " ",
            "\x00",
            "\ud7ff\ue000",
            "### End",
            "### Instruction:",
            "<|endoftext|>",
            "SLEEP:notanumber",
        ]
    ),
    st.text(max_size=40),
    st.integers(min_value=700, max_value=2000).map(lambda n: "ab " * n),  # over the model's context
)
numbers = st.one_of(
    st.integers(min_value=-3, max_value=20),
    st.integers(),
    st.sampled_from([10**30, -(10**30), 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.0, 1e-300, 1e300, -0.0, 5e-324]),
)
small_tokens = st.integers(min_value=1, max_value=4)
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
stops = st.one_of(
    st.text(max_size=8),
    st.lists(st.text(max_size=8), max_size=20),
    st.integers(min_value=0, max_value=5000).map(lambda n: ["x"] * n),  # thousands of stop strings
    st.just(["s" * 300]),
    st.just([""]),
    anything,
)
parameter_values = {
    "max_new_tokens": st.one_of(small_tokens, numbers, anything),
    "min_new_tokens": st.one_of(st.integers(min_value=0, max_value=4), numbers),
    "temperature": st.one_of(st.floats(min_value=0, max_value=2), numbers),
    "top_p": st.one_of(st.floats(min_value=0, max_value=1), numbers),
    "top_k": st.one_of(st.integers(min_value=0, max_value=50), numbers),
    "repetition_penalty": st.one_of(st.floats(min_value=0, max_value=3), numbers),
    "do_sample": st.one_of(st.booleans(), anything),
    "seed": st.one_of(st.integers(min_value=0, max_value=2**63 - 1), numbers),
    "stop": stops,
    "return_full_text": st.one_of(st.booleans(), anything),
    "details": st.one_of(st.booleans(), anything),
    "bogus": anything,
}


@st.composite
def parameters(draw):
    keys = draw(st.lists(st.sampled_from(sorted(parameter_values)), unique=True, max_size=5))
    params = {k: draw(parameter_values[k]) for k in keys}
    if "max_new_tokens" not in params or draw(st.booleans()):
        params["max_new_tokens"] = draw(small_tokens)  # keeps valid cases fast
    if isinstance(params.get("min_new_tokens"), int) and params["min_new_tokens"] > 4:
        params["min_new_tokens"] = 4
    return params


prompts = st.text(max_size=40).map(lambda s: s + "?")
valid_parameter_values = {
    "min_new_tokens": st.integers(min_value=0, max_value=1),
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0.01, max_value=1),
    "top_k": st.integers(min_value=0, max_value=50),
    "repetition_penalty": st.floats(min_value=0.01, max_value=3),
    "do_sample": st.booleans(),
    "seed": st.integers(min_value=0, max_value=2**63 - 1),
    "stop": st.lists(st.text(min_size=1, max_size=8), max_size=16),
    "return_full_text": st.booleans(),
    "details": st.booleans(),
}


@st.composite
def valid_bodies(draw):
    """Requests the server must answer with 200: every parameter in range, known adapters."""
    keys = draw(st.lists(st.sampled_from(sorted(valid_parameter_values)), unique=True, max_size=6))
    params = {k: draw(valid_parameter_values[k]) for k in keys}
    params["max_new_tokens"] = draw(small_tokens)
    if draw(st.booleans()):
        n = draw(st.integers(1, 3))
        body = {"inputs": draw(st.lists(prompts, min_size=n, max_size=n))}
        if draw(st.booleans()):
            names = st.sampled_from(KNOWN_ADAPTERS + ["__base__", ""])
            body["adapters"] = draw(st.lists(names, min_size=n, max_size=n))
    else:
        body = {"inputs": draw(prompts), "stream": draw(st.booleans())}
    if "adapters" not in body and draw(st.booleans()):
        body["adapters"] = draw(st.sampled_from(KNOWN_ADAPTERS + ["__base__"]))
    body["parameters"] = params
    return body


roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot", ""])
chat_values = {
    "model": st.one_of(adapter_names, anything),
    "max_tokens": st.one_of(small_tokens, anything),
    "max_completion_tokens": st.one_of(small_tokens, anything),
    "temperature": st.one_of(st.floats(min_value=-1, max_value=3), anything),
    "top_p": st.one_of(st.floats(min_value=0, max_value=1.5), anything),
    "seed": st.one_of(st.integers(min_value=-5, max_value=2**64), anything),
    "n": st.one_of(st.integers(min_value=-1, max_value=12), anything),
    "stop": st.one_of(st.lists(st.text(min_size=0, max_size=8), max_size=20), st.text(max_size=8), anything),
    "stream": st.one_of(st.booleans(), anything),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), anything),
    "logprobs": st.one_of(st.booleans(), anything),
    "top_logprobs": st.one_of(st.integers(min_value=-1, max_value=25), anything),
    "prompt_logprobs": st.one_of(st.integers(min_value=-1, max_value=25), anything),
    "add_generation_prompt": st.one_of(st.booleans(), anything),
    "continue_final_message": st.one_of(st.booleans(), anything),
    "logit_bias": st.one_of(st.just({}), anything),
    "user": anything,
    "tools": st.one_of(st.just([]), anything),
    "parameters": anything,
    "surprise": anything,
}


@st.composite
def chat_bodies(draw, valid: bool = False):
    """OpenAI chat requests (a body with messages): in range with ``valid``, else any mix of right and wrong."""
    if valid:
        body = {
            "messages": [{"role": "user", "content": draw(prompts)}],
            "model": draw(st.sampled_from(KNOWN_ADAPTERS + ["__base__"])),
            "max_tokens": draw(small_tokens),
            "temperature": draw(st.floats(min_value=0, max_value=2)),
            "stream": draw(st.booleans()),
        }
        if draw(st.booleans()):
            body["logprobs"], body["top_logprobs"] = True, draw(st.integers(0, 5))
        return body
    content = st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts})), anything)
    message = st.one_of(st.fixed_dictionaries({"role": roles, "content": content}), anything)
    body = {"messages": draw(st.one_of(st.lists(message, max_size=4), anything))}
    keys = draw(st.lists(st.sampled_from(sorted(chat_values)), unique=True, max_size=6))
    body.update({k: draw(chat_values[k]) for k in keys})
    if not isinstance(body.get("max_tokens"), int) and not isinstance(body.get("max_completion_tokens"), int):
        body["max_tokens"] = draw(small_tokens)  # keeps the cases that generate fast
    return body


@st.composite
def json_bodies(draw):
    """Objects in and around the LMI schema and OpenAI's chat requests: right and wrong types, unknown
    adapters, mismatched lists."""
    if draw(st.integers(0, 2)) == 0:
        return draw(st.one_of(valid_bodies(), chat_bodies(valid=True)))
    if draw(st.integers(0, 3)) == 0:
        return draw(chat_bodies())
    body = {}
    shape = draw(st.sampled_from(["single", "list", "wrong", "missing"]))
    if shape == "single":
        body["inputs"] = draw(texts)
    elif shape == "list":
        body["inputs"] = draw(st.lists(texts, max_size=4))
    elif shape == "wrong":
        body["inputs"] = draw(anything)
    if draw(st.booleans()):
        body["parameters"] = draw(parameters()) if draw(st.integers(0, 4)) else draw(anything)
    else:
        body["parameters"] = {"max_new_tokens": draw(small_tokens)}
    if draw(st.booleans()):
        n = len(body["inputs"]) if isinstance(body.get("inputs"), list) else 1
        body["adapters"] = draw(
            st.one_of(
                adapter_names,
                st.lists(adapter_names, min_size=n, max_size=n),  # matches the inputs
                st.lists(adapter_names, min_size=0, max_size=n + 2),  # usually does not
                anything,
            )
        )
    if draw(st.integers(0, 5)) == 0:
        body["stream"] = draw(st.one_of(st.booleans(), anything))
    if draw(st.integers(0, 8)) == 0:
        body[draw(st.sampled_from(["messages", "surprise", "Inputs", ""]))] = draw(anything)
    return body


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    inner = b'{"inputs":"x","parameters":{"max_new_tokens":1,"stop":' + b"[" * depth + b'"x"' + b"]" * depth + b"}}"
    return inner


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(_nested, st.integers(min_value=1, max_value=30000), st.sampled_from(["list", "object", "stop"])),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b"{}",
            b'"inputs"',
            b"1e999999",
            b"NaN",
            b'{"inputs":"x"',
            b"\xef\xbb\xbf{}",
            b'{"inputs":"\xff\xfe"}',
            b'{"inputs":"\xed\xa0\x80"}',
            b'{"inputs":"\\ud800"}',
            b'{"inputs":"a","inputs":5}',
            b'{"inputs": "x", "parameters": {"max_new_tokens": 1e400}}',
        ]
    ),
)


@st.composite
def bodies(draw) -> bytes:
    """Request bytes: JSON from ``json_bodies`` (sometimes mangled into invalid UTF-8), or raw bytes."""
    if draw(st.integers(0, 3)) == 0:
        return draw(raw_bodies)
    data = json.dumps(draw(json_bodies()), ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 6)) == 0 and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x80\x80"])) + data[at:]
    return data


header_tokens = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
headers = st.dictionaries(
    st.sampled_from(
        [
            "X-Amzn-SageMaker-Adapter-Identifier",
            "X-Amzn-SageMaker-Custom-Attributes",
            "Content-Type",
            "Accept",
            "X-Request-Id",
            "handler",
            "batch_size",
            "X-Loraship-Fuzz",
            "model_dir",
            "device_id",
        ]
    ),
    st.one_of(
        header_tokens,
        st.sampled_from(
            [
                "alpha",
                "beta",
                "__base__",
                "nope",
                "handler=x",
                "batch_000.data=1",
                "a=b;c=d;;=;x",
                "text/plain",
                "application/json; charset=latin-1",
            ]
        ),
    ),
    max_size=3,
)
# Characters java.net.URI accepts in a query: the JDK's HTTP server refuses any other request line
# with its own HTML 400 before loraship's code runs (test_fuzz.py checks that case apart).
URI_QUERY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?"
query_parts = st.one_of(
    st.text(alphabet=URI_QUERY_CHARS, max_size=12),
    st.binary(max_size=6).map(urllib.parse.quote_from_bytes),  # %-escapes of any bytes, invalid UTF-8 too
)
queries = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            "adapter=alpha",
            "adapter=beta",
            "adapter=nope",
            "adapter=",
            "adapter=__base__",
            "adapter=alpha&adapter=beta",
            "adapter=%FF%FE",
            "adapter=%C3",
            "&&&",
            "data=1",
            "data=%7B%22inputs%22%3A%22q%22%7D",
            "adapter=a%00b",
            "x=1&y",
            "adapter=alpha%20",
        ]
    ),
    st.lists(st.tuples(st.sampled_from(["adapter", "data", "x", ""]), query_parts), max_size=3).map(
        lambda kv: "&".join(f"{k}={v}" for k, v in kv)
    ),
    st.lists(query_parts, max_size=3).map("".join),
)


# ---- figures ---------------------------------------------------------------------------------------


@dataclass
class Figures:
    """What the suite measured; printed at the end of the run."""

    values: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str, n: float = 1) -> None:
        with self.lock:
            self.values[key] = self.values.get(key, 0) + n

    def set(self, key: str, value) -> None:
        with self.lock:
            self.values[key] = value


FIGURES = Figures()


def raw_request(url: str, head: str, body: bytes | list[bytes] = b"", timeout: float = HANG_SECONDS) -> Reply:
    """Bytes straight onto a socket (for what http.client will not send): ``head`` without the blank line;
    a list ``body`` goes out as chunks of a chunked body."""
    parts = urllib.parse.urlsplit(url)
    start = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        data = head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n"
        if isinstance(body, list):
            data += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body) + b"0\r\n\r\n"
        else:
            data += body
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: read that answer
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        payload = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload, time.monotonic() - start)
