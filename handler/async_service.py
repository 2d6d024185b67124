"""The handler in DJL's async mode (``option.async_mode=true``): continuous batching, one stream per request.

DJL's ``PythonAsyncEngine`` awaits ``handle`` for every request as it arrives, concurrently, on its
event loop. Each request is parsed and admitted as in static mode (the same limits and errors), then
its prompts join the scheduler's running batch; the reply is awaited, or streamed as JSON lines.
Every request gets its own status: a bad request its 4xx while others generate.

Replies use djl_python's async framing (``async_utils``): every message is a binary dict
``{data, last, code, error}``; DJL sends a code on the first message as the HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from djl_python import Input, Output
from djl_python.async_utils import create_non_stream_output

from .batching import Engine, Sequence, result_of
from .errors import BadRequest, Cancelled, GenerationTimeout, NotFound
from .openai_chat import error_json, error_message
from .scheduler import Job, Scheduler, release_openmp_pool
from .service import HandlerService

log = logging.getLogger(__name__)


class AsyncHandlerService:
    """Parses and admits as :class:`HandlerService` does; generates through the :class:`Scheduler`."""

    def __init__(self):
        self.core = HandlerService()
        self.scheduler: Scheduler | None = None
        self.leaving: set[str] = set()
        """Adapters being unregistered: new requests get 404 while their running rows finish."""
        self.live: dict[str, list[Job]] = {}
        """Running requests by DJL's ``request_tracking_id``, for :meth:`cancel`."""

    def initialize(self, properties: dict) -> None:
        core = self.core
        core.initialize(properties)
        gen, opts = core.generator, core.options
        engine = Engine(gen.tokenizer, gen.device, gen.eos_ids, gen.stop_sequences, **core.decode_options())
        self.scheduler = Scheduler(
            engine,
            core.adapters.ensure_loaded,
            max_rows=opts.max_rolling_batch_size,
            max_batch_tokens=opts.max_batch_total_tokens,
        )
        # The compiled one-row step (option.decode) compiles before the model reports ready, as vLLM captures its
        # CUDA graphs and TGI warms up at start-up: the first requests then see the speed the later ones do.
        engine.prepare(core.adapters.ensure_loaded([]), background=False)
        release_openmp_pool()  # from here the scheduler's thread does the torch work

    async def handle(self, inputs: Input):
        if self.scheduler is None:
            try:
                self.initialize(inputs.get_properties())
            except Exception as exc:
                return self.core.load_failure(exc)
        if inputs.is_empty():
            return None
        try:
            req, prompts, ids = self.core.parse(inputs)
            gone = sorted(set(req.adapters) & self.leaving)
            if gone:
                raise NotFound(f"adapter {gone[0]!r} is being unregistered", field="adapters")
            if req.stream and len(prompts) > 1:
                raise BadRequest("streaming takes one input; send the others as their own requests", field="stream")
            for adapter in req.adapters:
                if self.core.adapters.tokenizer_for(adapter) is not self.core.generator.tokenizer:
                    raise BadRequest(
                        f"adapter {adapter!r} brings its own tokenizer, which continuous batching does not serve: "
                        "serve it from a model dir built with --batching static",
                        field="adapters",
                    )
        except Exception as exc:
            code, body = error_json(exc)  # OpenAI's error object for a chat request
            self.core.metrics.refused(code)
            return create_non_stream_output(body, code=code, error=error_message(body))
        jobs, events = self._submit(req, ids)
        tracking = inputs.get_property("request_tracking_id")
        if tracking:
            self.live[tracking] = jobs
        if req.stream:
            return self._stream(req, jobs[0], events, tracking)
        try:
            return await self._reply(req, jobs, events)
        finally:
            self.live.pop(tracking, None)

    async def cancel(self, inputs: Input) -> Output:
        """Ends the request whose ``request_tracking_id`` is the property ``target`` (its client went away):
        its rows leave the batch at the next step. loraship's host calls it; real DJL Serving never does."""
        target = inputs.get_property("target") or ""
        jobs = self.live.get(target, [])
        for job in jobs:
            self.scheduler.cancel(job)
        return create_non_stream_output({"cancelled": len(jobs)})

    # -- generation --------------------------------------------------------------------------------
    def _submit(self, req, ids: list[list[int]]) -> tuple[list[Job], asyncio.Queue]:
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        deadline = time.monotonic() + self.core.options.time_budget
        jobs = []
        for i, (prompt_ids, adapter) in enumerate(zip(ids, req.adapters)):
            seq = self.scheduler.engine.new_sequence(prompt_ids, req.params_of(i), adapter, key=i)
            jobs.append(
                self.scheduler.submit(
                    Job(
                        seq,
                        on_text=lambda s, t: loop.call_soon_threadsafe(events.put_nowait, (s, t, False)),
                        on_done=lambda s, t: loop.call_soon_threadsafe(events.put_nowait, (s, t, True)),
                        deadline=deadline,
                    )
                )
            )
        return jobs, events

    async def _reply(self, req, jobs: list[Job], events: asyncio.Queue) -> Output:
        pending = len(jobs)
        while pending:
            *_, done = await events.get()
            pending -= done
        failed = next((j.seq for j in jobs if j.seq.finish_reason in ("error", "time", "cancelled")), None)
        if failed is not None:
            code, body = error_json(self._failure(failed), chat=req.chat is not None)
            self.core.metrics.finished(req, code, jobs)
            return create_non_stream_output(body, code=code, error=error_message(body))
        tokenizer = self.scheduler.engine.tokenizer
        results = [result_of(j.seq, tokenizer, with_tokens=req.wants_tokens) for j in jobs]
        self.core.metrics.finished(req, 200, jobs)
        body = self.core.encode(req, results, max(j.seq.batch_size for j in jobs))
        return create_non_stream_output(json.dumps(body, ensure_ascii=False))  # a list too (a dict only, as is)

    async def _stream(self, req, job: Job, events: asyncio.Queue, tracking: str | None):
        writer, content_type = self.core.stream_writer(req, self.scheduler.engine.tokenizer)
        try:
            if req.chat is not None:
                yield _chunk(writer.start(), last=False, content_type=content_type)
            while True:
                seq, tokens, done = await events.get()
                if done:
                    break
                for chunk in writer.tokens(seq, tokens):
                    yield _chunk(chunk, last=False, content_type=content_type)
        finally:
            self.live.pop(tracking, None)
        failure = self._failure(seq) if seq.finish_reason in ("error", "time", "cancelled") else None
        self.core.metrics.finished(req, error_json(failure)[0] if failure else 200, [job])
        lines = writer.final(seq, tokens, failure)
        for i, chunk in enumerate(lines):
            yield _chunk(chunk, last=i == len(lines) - 1, content_type=content_type)

    def _failure(self, seq: Sequence) -> Exception:
        if seq.finish_reason == "cancelled":
            return Cancelled(f"request cancelled after {len(seq.tokens)} tokens")
        if seq.finish_reason == "time":
            return GenerationTimeout.after(
                time.perf_counter() - seq.started, len(seq.tokens), self.core.options.predict_timeout
            )
        return seq.error or RuntimeError("generation failed")

    # -- adapters ------------------------------------------------------------------------------------
    async def adapter_call(self, inputs: Input, action: str) -> Output:
        """DJL's adapter hooks; run between decode steps, so no step sees an adapter half loaded. An adapter
        being unregistered refuses new requests at once and is unloaded when its running rows are done."""
        name = inputs.get_property("name") or ""
        if action == "unregister" and name in self.core.adapters.sources:
            self.leaving.add(name)

            def remove_when_unused():  # on the scheduler's thread, between steps: no row is half admitted
                return None if self._in_use(name) else self._op(inputs, action)

            try:
                while (done := await self._between(remove_when_unused)) is None:
                    await asyncio.sleep(0.05)
                return done
            finally:
                self.leaving.discard(name)
        return await self._between(lambda: self._op(inputs, action))

    def _in_use(self, name: str) -> bool:
        jobs = list(self.scheduler.running) + list(self.scheduler.waiting)
        return any(job.seq.adapter == name and not job.seq.done for job in jobs)

    async def _between(self, fn):
        return await asyncio.wrap_future(self.scheduler.between_steps(fn))

    def _op(self, inputs: Input, action: str) -> Output:
        code, body, message = self.core.adapter_op(inputs, action)
        if code >= 300:
            return create_non_stream_output(body, code=code, error=message)
        return create_non_stream_output(body)


def _chunk(data: bytes, last: bool, content_type: str) -> Output:
    """One message of a stream in djl_python's async framing (``async_utils.create_stream_chunk_output``'s
    frame, with the line as the handler wrote it: LMI's JSON line or SSE event, or a chat chunk's event)."""
    out = Output()
    out.add_property("Content-Type", content_type)
    out.add(Output.binary_encode({"data": data.decode("utf-8"), "last": last}))
    return out
