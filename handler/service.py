"""The handler service: DJL's ``Input`` in, ``Output`` out, with per-request errors.

``model.py`` in a model dir holds one ``HandlerService`` and forwards DJL's calls to it; tests
drive the same class in-process.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import time
from collections import defaultdict
from typing import NamedTuple

from djl_python import Input, Output

from . import lmi, openai_chat
from .batching import Engine
from .decode import pick_decode
from .errors import BadRequest, GenerationTimeout, HandlerError, PayloadTooLarge
from .generation import GenerationResult
from .loading import load
from .openai_chat import ChatStreamWriter, ModelNames, error_json
from .properties import ServingOptions
from .requests import ParsedRequest, decode_json, parse_lmi
from .scheduler import Job, Scheduler
from .streaming import StreamWriter

log = logging.getLogger(__name__)
ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
JSON = "application/json"
#: Seconds between a static stream's last message and its end message (see HandlerService._stream).
STREAM_END_GAP = 0.05
# Content keys of a real batch: DJL's server writes "batch_NNN.", djl_python.test_model's batch helper "batch_NNN_".
BATCH_KEY = re.compile(r"batch_\d{3}[._]")


class _Row(NamedTuple):
    """One item of one request, as it waits for a generate call."""

    request: int  # index in the DJL batch
    item: int  # index in the request's inputs
    prompt: str
    adapter: str
    tokenizer: object
    prompt_tokens: int


class HandlerService:
    """Loads the model on DJL's initialisation call and serves generation requests."""

    def __init__(self):
        self.options: ServingOptions | None = None
        self._schedulers: dict[int, Scheduler] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def initialize(self, properties: dict) -> None:
        opts = ServingOptions.from_properties(properties)
        loaded = load(opts, properties)
        self.pipeline, self.generator, self.adapters = loaded.pipeline, loaded.generator, loaded.adapters
        self.metrics = loaded.metrics
        self.names = ModelNames.of(opts.model_id, opts.model_dir, str(opts.extra.get("served_model_name", "")))
        self.options = opts
        log.info("model %s loaded on %s with pipeline %s", opts.model_id, self.generator.device, self.pipeline.name)

    def load_failure(self, exc: Exception) -> Output:
        """What DJL gets when loading failed: status 500 with the reason as the Output's message."""
        log.error("model load failed", exc_info=exc)
        reason = str(exc) if isinstance(exc, HandlerError) else f"{type(exc).__name__}: {exc}"
        return _json_output(500, {"error": reason, "code": 500, "type": type(exc).__name__}, message=reason)

    def handle(self, inputs: Input) -> Output | None:
        if self.options is None:
            # DJL Serving initialises with a call of its own (no content); djl_python.test_model sends
            # the properties and the first request in one call, which is served once loaded.
            self.initialize(inputs.get_properties())
        if inputs.is_empty():
            return None
        return self.inference(inputs)

    # -- adapters ------------------------------------------------------------------------------
    def register(self, name: str, src: str, pin: bool = False) -> None:
        self.adapters.add(name, src, pin=pin)

    def adapter_call(self, inputs: Input, action: str) -> Output:
        """DJL's register_adapter / update_adapter / unregister_adapter hooks."""
        code, body, message = self.adapter_op(inputs, action)
        # Real DJL Serving answers adapter calls with Output.message alone: it must carry the explanation.
        return _json_output(code, body, message=message)

    def adapter_op(self, inputs: Input, action: str) -> tuple[int, dict, str]:
        """Register, update or unregister the adapter ``inputs`` names: (status, body, message)."""
        name = inputs.get_property("name") or ""
        src = inputs.get_property("src") or ""
        pin = inputs.get_content().get("pin")
        try:
            if action == "register":
                self.register(name, src, pin=pin is not None and bytes(pin).decode().lower() == "true")
            elif action == "update":
                self.adapters.update(name, src)
            else:
                self.adapters.remove(name)
        except Exception as exc:  # every failure is reported; the served adapters stay as they were
            code, body = error_json(exc)
            return code, body, body["error"]
        done = {"register": "registered", "update": "updated", "unregister": "unregistered"}[action]
        status = f"Adapter {name} {done}"
        return 200, {"status": status}, status

    # -- inference -----------------------------------------------------------------------------
    def inference(self, inputs: Input) -> Output:
        # Generation answers before DJL's predict_timeout would kill the worker (and every request in it).
        deadline = time.monotonic() + self.options.time_budget
        # is_batch() alone is not enough: djl_python.test_model copies serving.properties (batch_size
        # included) into every request, and get_batches() then fails on keys without a batch prefix.
        is_batch = inputs.is_batch() and any(BATCH_KEY.match(k or "") for k in inputs.get_content().get_keys())
        batch = inputs.get_batches() if is_batch else [inputs]
        replies: list[tuple[int, object]] = [(500, None)] * len(batch)
        parsed: dict[int, tuple[ParsedRequest, list[str], list[int]]] = {}
        for i, item in enumerate(batch):
            try:
                parsed[i] = self.parse(item)
            except Exception as exc:
                replies[i] = error_json(exc)
        results: dict[int, list[GenerationResult | None]] = {i: [None] * len(p[0].items) for i, p in parsed.items()}
        stream_index = next((i for i, p in parsed.items() if p[0].stream), None)
        groups = defaultdict(list)
        for i, (req, prompts, ids) in parsed.items():
            if i == stream_index and len(batch) == 1:
                continue
            for j, prompt in enumerate(prompts):
                # Adapters that added tokens bring their own tokenizer: they batch apart.
                tokenizer = self.adapters.tokenizer_for(req.adapters[j])
                params = req.params_of(j)
                groups[(params, id(tokenizer))].append(_Row(i, j, prompt, req.adapters[j], tokenizer, len(ids[j])))
        failed: dict[int, BaseException] = {}
        for (params, _), members in groups.items():
            for part in self._parts(members, params):
                rows = [r for r in part if r.request not in failed]
                if not rows:
                    continue
                names = [r.adapter for r in rows]
                try:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise GenerationTimeout(
                            f"not started: the batch before it used the {self.options.time_budget:.0f} s that "
                            f"option.predict_timeout ({self.options.predict_timeout} s) leaves for generation"
                        )
                    model = self.adapters.ensure_loaded(names)
                    out = self.generator.generate(
                        [r.prompt for r in rows],
                        params,
                        names,
                        tokenizer=rows[0].tokenizer,
                        max_time=left,
                        model=model,
                        with_tokens=any(parsed[r.request][0].wants_tokens for r in rows),
                    )
                except Exception as exc:
                    if not isinstance(exc, GenerationTimeout):
                        log.exception("generation failed for a group of %d items", len(rows))
                    for r in rows:
                        failed[r.request] = exc
                    continue
                self.metrics.generated(names, out, received=deadline - self.options.time_budget)
                for r, res in zip(rows, out):
                    if res.finish_reason == "time":
                        failed[r.request] = GenerationTimeout.after(
                            res.seconds, res.generated_tokens, self.options.predict_timeout
                        )
                    results[r.request][r.item] = res
        for i, (req, prompts, _) in parsed.items():
            if i in failed:
                replies[i] = error_json(failed[i], chat=req.chat is not None)
            elif req.stream and len(batch) == 1:
                return self._stream(req, prompts[0], deadline)
            elif req.stream:
                replies[i] = error_json(
                    BadRequest(
                        "streaming is available only when requests are not batched; set batch_size=1", field="stream"
                    ),
                    chat=req.chat is not None,
                )
            else:
                replies[i] = (200, self.encode(req, results[i], len(batch)))
        self.metrics.replied(replies, parsed)
        return _batch_output(replies, is_batch)

    def _parts(self, members: list[_Row], params) -> list[list[_Row]]:
        """A group's rows in generate calls that each cost at most option.max_batch_total_tokens
        (rows x (longest prompt + max_new_tokens)); shortest prompts first, so little is padding."""
        budget, parts, part, longest = self.options.max_batch_total_tokens, [], [], 0
        for m in sorted(members, key=lambda m: m.prompt_tokens):
            if part and (len(part) + 1) * (max(longest, m.prompt_tokens) + params.max_new_tokens) > budget:
                parts.append(part)
                part, longest = [], 0
            part.append(m)
            longest = max(longest, m.prompt_tokens)
        return parts + [part] if part else parts

    def parse(self, item: Input) -> tuple[ParsedRequest, list[str], list[list[int]]]:
        """The request, its prompts and their token ids, admitted against the limits (413 if over)."""
        opts = self.options
        query = item.get_content().get("adapter")
        content = item.get_content()
        # The body is the last "data" item: a "?data=" query parameter comes before it. djl_python.test_model
        # adds the body with no key.
        body = next(
            (content.value_at(i) for i in reversed(range(content.size())) if content.key_at(i) in ("data", None)), None
        )
        body = decode_json(body)
        query = bytes(query).decode("utf-8", "replace") if query is not None else None
        header = item.get_property(ADAPTER_HEADER)
        if openai_chat.is_chat(body):
            try:
                return self._admit(self._parse_chat(body, query, header))
            except Exception as exc:
                openai_chat.mark(exc)  # its reply is OpenAI's error object
                raise
        req = parse_lmi(
            body,
            input_field=self.pipeline.input_field,
            max_cap=opts.max_new_tokens,
            default_max=opts.default_max_new_tokens,
            query_adapter=query,
            header_adapter=header,
            details=opts.tgi_compat,
        )
        if opts.output_formatter == "jsonlines" and not req.is_list:
            req.stream = True  # LMI's jsonlines formatter streams every reply
        return self._admit(req)

    def _parse_chat(self, body: dict, query: str | None, header: str | None) -> ParsedRequest:
        opts = self.options
        return openai_chat.parse_chat(
            body,
            names=self.names,
            adapters=self.adapters.names(),
            max_cap=opts.max_new_tokens,
            default_max=opts.default_max_new_tokens,
            max_n=opts.max_inputs_per_request,
            query_adapter=query,
            header_adapter=header,
        )

    def _prompts(self, req: ParsedRequest) -> list[str]:
        """The prompt of each item: the pipeline's chat prompt (the same for a chat request's n rows), or
        its ``decode_request`` of each input."""
        if req.chat is None:
            return [self.pipeline.decode_request(x) for x in req.items]
        chat = req.chat
        prompt = self.pipeline.chat_prompt(
            chat.messages,
            add_generation_prompt=chat.add_generation_prompt,
            continue_final_message=chat.continue_final_message,
        )
        return [prompt] * len(req.items)

    def _admit(self, req: ParsedRequest) -> tuple[ParsedRequest, list[str], list[list[int]]]:
        """The request with its prompts and their token ids, once within the limits (413 if over)."""
        opts = self.options
        n = len(req.items)
        if n > opts.max_inputs_per_request:
            raise PayloadTooLarge(
                f"the request has {n} inputs; option.max_inputs_per_request is "
                f"{opts.max_inputs_per_request}: send them in several requests",
                field="inputs",
            )
        self.adapters.check(req.adapters)
        prompts = self._prompts(req)
        if req.chat is not None:  # n rows of one prompt
            ids = [self.generator.check_length(prompts[0], req.params)] * n
        else:
            ids = [self.generator.check_length(p, req.params) for p in prompts]
        lengths = [len(i) for i in ids]
        cost = sum(lengths) + n * req.params.max_new_tokens
        if cost > opts.max_request_tokens:
            raise PayloadTooLarge(
                f"the request costs {cost} tokens ({sum(lengths)} prompt tokens + {n} x max_new_tokens "
                f"{req.params.max_new_tokens}); option.max_request_tokens is {opts.max_request_tokens}: ask for "
                "fewer max_new_tokens or send fewer inputs per request",
                field="inputs",
            )
        return req, prompts, ids

    def encode(self, req: ParsedRequest, results: list[GenerationResult], batch_size: int) -> object:
        """LMI's reply: ``{"generated_text"}`` (with ``details`` when asked for), a list for a list of inputs;
        a chat request's ``chat.completion``."""
        if req.chat is not None:
            return openai_chat.completion(req.chat, results, self.pipeline.encode_response)
        tgi = self.options.tgi_compat
        replies = []
        for item, adapter, res in zip(req.items, req.adapters, results):
            text = self.pipeline.encode_response(res.text)
            if req.return_full_text and isinstance(item, str):
                text = item + text
            reply = {"generated_text": text}
            if req.details:
                inputs = item if isinstance(item, str) else ""
                reply["details"] = lmi.details(res, inputs, adapter=adapter, batch_size=batch_size, tgi=tgi)
            replies.append(reply)
        # LMI's tgi_compat wraps a whole reply in a one-element list, as TGI answers
        return replies if req.is_list or tgi else replies[0]

    def _stream(self, req: ParsedRequest, prompt: str, deadline: float) -> Output:
        """A request alone in its batch, streamed: decoded by a one-row scheduler, as continuous batching
        decodes (the same tokens, the same lines)."""
        adapter = req.adapters[0]
        tokenizer = self.adapters.tokenizer_for(adapter)
        scheduler = self._stream_scheduler(tokenizer)
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        seq = scheduler.engine.new_sequence(ids, req.params, adapter)
        events: queue.SimpleQueue = queue.SimpleQueue()
        job = scheduler.submit(
            Job(seq, lambda s, t: events.put((t, False)), lambda s, t: events.put((t, True)), deadline=deadline)
        )
        opts = self.options
        writer, content_type = self.stream_writer(req, tokenizer)

        def lines():
            if req.chat is not None:
                yield writer.start()
            while True:
                tokens, done = events.get()
                if not done:
                    yield from writer.tokens(seq, tokens)
                    continue
                failure = None
                if seq.finish_reason == "time":
                    failure = GenerationTimeout.after(
                        time.perf_counter() - seq.started, len(seq.tokens), opts.predict_timeout
                    )
                elif seq.finish_reason in ("error", "cancelled"):
                    failure = seq.error or RuntimeError(f"generation ended: {seq.finish_reason}")
                self.metrics.finished(req, error_json(failure)[0] if failure else 200, [job])
                last = writer.final(seq, tokens, failure)
                # A chat stream's last events go as one message, and the stream's end message follows a moment
                # later: real DJL Serving 0.36.0's worker-output decoder mis-frames an end message that a socket
                # read splits, then misreads every later reply (measured: the server died of OutOfMemoryError
                # after an openai client's stream in 4 of 8 runs; none with this).
                yield from [b"".join(last)] if req.chat is not None else last
                time.sleep(STREAM_END_GAP)
                return

        out = Output()
        out.add_property("content-type", content_type)
        out.add_stream_content(lines(), output_formatter=None)
        return out

    def stream_writer(self, req: ParsedRequest, tokenizer) -> tuple[StreamWriter | ChatStreamWriter, str]:
        """What writes a streamed request's messages, and their content type: LMI's JSON lines or events,
        or a chat request's ``chat.completion.chunk`` events."""
        if req.chat is not None:
            return ChatStreamWriter(req.chat, self.pipeline.encode_response, tokenizer), openai_chat.SSE
        opts = self.options
        writer = StreamWriter(
            req, req.items[0], self.pipeline.encode_response, tokenizer, tgi=opts.tgi_compat, sse=opts.sse
        )
        return writer, lmi.SSE if opts.sse else lmi.JSONLINES

    def decode_options(self) -> dict:
        """The engine's decode path (``option.decode``, ``auto`` resolved for this device)."""
        opts = self.options
        return {
            "decode": pick_decode(opts.decode, self.generator.device, opts.quantize),
            "decode_tokens": opts.decode_tokens,
            "lora_rank": opts.max_lora_rank if opts.enable_lora else 0,
            "lora_targets": tuple(t.strip() for t in opts.lora_target_modules.split(",") if t.strip()),
        }

    def _stream_scheduler(self, tokenizer) -> Scheduler:
        """One row at a time: static batching streams only a request alone in its batch."""
        key = id(tokenizer)
        if key not in self._schedulers:
            gen = self.generator
            stops = gen.stop_sequences
            engine = Engine(tokenizer, gen.device, gen.eos_ids, stops, **self.decode_options())
            self._schedulers[key] = Scheduler(engine, self.adapters.ensure_loaded, max_rows=1)
        return self._schedulers[key]


class _ReadableOutput(Output):
    """An Output whose ``str()`` shows its bodies, not just their types: djl_python.test_model prints it."""

    def __str__(self) -> str:
        shown = json.loads(super().__str__())
        shown["content"] = {
            self.content.key_at(i): _readable(self.content.value_at(i)) for i in range(self.content.size())
        }
        return json.dumps(shown, indent=2, ensure_ascii=False)


def _readable(value):
    try:
        return json.loads(bytes(value))
    except ValueError:  # not JSON (UnicodeDecodeError is a ValueError too)
        return bytes(value).decode("utf-8", "replace")


def _json_output(code: int, body, message: str | None = None) -> Output:
    if message is None and code >= 300:
        err = body.get("error")
        message = err.get("type") if isinstance(err, dict) else body.get("type")  # OpenAI's error object or ours
    out = _ReadableOutput(code=code, message=message or ("OK" if code < 300 else "Error"))
    out.add_property("content-type", JSON)
    out.add_as_json(body)
    return out


def _batch_output(replies: list[tuple[int, object]], is_batch: bool) -> Output:
    """One Output for the batch: per-index bodies; the status is real only for a lone request."""
    if not is_batch:
        return _json_output(*replies[0])
    out = _ReadableOutput()
    out.add_property("content-type", JSON)
    for i, (_, body) in enumerate(replies):
        out.add_as_json(body, batch_index=i)
    return out
