"""Where real DJL Serving 0.36.0 and loraship's host differ on purpose, and why.

A test that meets one of these calls ``expect(case, kind)`` to pick the behaviour it asserts for that
server, so the suite fails if a difference disappears or changes unnoticed. ``README.md`` (DJL Serving
here) lists the same cases.
"""

from __future__ import annotations

DIFFERENCES: dict[str, dict[str, str]] = {
    "idle_worker_crash": {
        "djl": "a worker that dies while idle is never replaced: /ping stays 200 and every request gets "
        "400 TranslateException 'Backend Python process is stopped.' (PyPredictor restarts only a "
        "worker flagged as exited abruptly, which outside MPI mode only an interrupted restart sets)",
        "host": "the worker is replaced at once; requests and adapter calls sent meanwhile wait for it",
        "why": "a limitation of DJL Serving 0.36.0, not a choice: the host recovers because it can",
    },
    "mid_request_crash": {
        "djl": "the request in flight gets 503 WlmException 'Python worker disconnected.'; later requests get "
        "503 WlmCapacityException until a new worker starts, about 60 s later (the dead worker thread "
        "stays in the pool for one minute, WorkerThread.isStale, and enable_lora forces maxWorkers=1)",
        "host": "the request in flight gets 503 WorkerDiedException; requests sent meanwhile queue and are served "
        "by the replacement worker a few seconds later",
        "why": "DJL's recovery needs retry_threshold (the model dir sets it); its delay is DJL's",
    },
    "ping_during_restart": {
        "djl": "200 {'md': {'status': 'Healthy'}} while the dead worker thread lingers (about a minute), then "
        "200 'Unhealthy' until a new worker runs",
        "host": "500 {'md': {'status': 'Unhealthy'}} until the new worker runs and has its adapters back",
        "why": "the host's callers (tests, the demo) read 200 as 'ready, adapters restored'; the host recovers in "
        "seconds, so a load balancer loses little by believing it",
    },
    "client_disconnect": {
        "djl": "a streamed request whose client went away keeps its row until it is done or runs past "
        "predict_timeout: DJL only marks the Input cancelled (InferenceRequestHandler.channelInactive), which "
        "nothing reads once the job is with the worker, and its async framing has no cancel message",
        "host": "the row leaves the batch at the next decode step and its slot frees: the host sees the failed write "
        "of the next chunk and calls the handler's cancel_request with the request's request_tracking_id",
        "why": "a limitation of DJL Serving 0.36.0; vLLM, TGI and LoRAX all free a disconnected request's slot",
    },
    "async_adapter_failure": {
        "djl": "200 with the registration's own status message, whatever the handler answers: in async mode DJL's "
        "adapter API reads the Output before the handler's reply has arrived",
        "host": "the handler's status and message (400 for a source outside option.adapter_roots): the host waits for "
        "the reply before it answers",
        "why": "a race in DJL Serving 0.36.0; a client must otherwise check GET /models/{m}/adapters after each call",
    },
    "batch_key_headers": {
        "djl": "a header named batch_size, or a custom attribute batch_000.data, reaches the handler as a property "
        "and the request is served (the handler treats an Input as a batch only with batch_NNN content keys)",
        "host": "400 'reserved for DJL's batch encoding' before the worker",
        "why": "the host's guard predates the handler's own check; it stays as defence in depth, since a "
        "handler without that check would misparse such a request",
    },
    "async_response_metric": {
        "djl": "in async mode (continuous batching) Response_2XX counts the handler's 4xx and 5xx too, unless its "
        "reply happened to arrive first: DJL reads the Output's code as soon as the request is dispatched, before "
        "the handler's first message sets it (a race; measured: 9 of 9 and 8 of 9 counted as 2XX)",
        "host": "Response_2XX, _4XX and _5XX by the status sent",
        "why": "an ordering bug in DJL Serving 0.36.0; the handler's own LorashipRequests_<code> is right on both",
    },
    "startup_metrics": {
        "djl": "also serves its start-up metrics: DJLServingStart, StartupLatency, LoadModel, DownloadModel, "
        "RegisterWorkflow, LoadAdapter",
        "host": "serves the handler's metrics and DJL's per-request ones (QueueTime, RequestLatency, Response_*) only",
        "why": "one-off start-up timings; the host's own log has them",
    },
}


def expect(case: str, kind: str) -> str:
    """The documented behaviour of ``kind`` in ``case`` (a KeyError names an undocumented case)."""
    return DIFFERENCES[case][kind]
