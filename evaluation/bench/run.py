"""One benchmark run, start to finish: snapshot the server, probe adapters cold and warm, warm up,
run each level, then write bench.json, requests.jsonl, summary.md and the plots.

Ctrl-C stops the run cleanly: the level in progress keeps what it measured, later levels are
skipped, and every output is still written (``interrupted: true`` in bench.json).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

import requests
from pydantic import field_validator

from loraship.core.errors import LorashipError
from loraship.handler.settings import Flag, Settings

from .client import PATHS, Client, HttpTransport, RequestRecord, SageMakerTransport, make_api
from .load import Level, LevelRun, Shape, run_level
from .server_metrics import difference, latency_split, settled_snapshot, snapshot
from .stats import SLO_KEYS, cold_warm, realised, summarize_level
from .tokens import Tokens
from .workload import BASE, Workload, faq_corpus, load_rows

SCHEMA = "loraship.bench/1"
PROBE_WARM_SAMPLES = 2


class BenchError(LorashipError, ValueError):
    """A setting is wrong (a ValueError too, so that pydantic reports it with the others)."""


TARGET = "target: where requests go, in which schema"
WORKLOAD = "workload: what each request asks for"
LOAD = "load: when requests are sent"
OUTPUTS = "outputs: what is measured and written"
SYNTHETIC = ("input_tokens", "prefixes", "output_lengths_from_dataset")


class BenchConfig(Settings):
    """What to run; ``problems()`` lists every invalid setting at once. The fields are the flags of
    ``loraship bench``; each docstring is its help."""

    url: Annotated[str | None, Flag(group=TARGET)] = None
    """the server, e.g. http://127.0.0.1:8080 (or --sagemaker-endpoint)"""
    sagemaker_endpoint: Annotated[str | None, Flag(group=TARGET, metavar="NAME")] = None
    """a SageMaker endpoint instead of --url: SigV4-signed InvokeEndpoint (InvokeEndpointWithResponseStream with
    --stream) through boto3 and its credential chain"""
    region: Annotated[str | None, Flag(group=TARGET)] = None
    """the SageMaker endpoint's region (default: boto3's, from AWS_REGION or the profile)"""
    inference_component: Annotated[str | None, Flag(group=TARGET, metavar="IC")] = None
    """the SageMaker inference component to invoke (InferenceComponentName)"""
    target_variant: Annotated[str | None, Flag(group=TARGET, metavar="V")] = None
    """the SageMaker production variant to invoke (TargetVariant)"""
    api: Annotated[Literal["lmi", "openai-chat", "openai-completions"], Flag(group=TARGET)] = "lmi"
    """the request schema: DJL LMI's, or OpenAI's chat completions or completions (vLLM, TGI, LoRAX, llama.cpp's
    server, ...); with the OpenAI APIs an adapter is the request's model"""
    endpoint: Annotated[str | None, Flag(group=TARGET, metavar="PATH")] = None
    """path requests are POSTed to (default: the --api's: /invocations, /v1/chat/completions, /v1/completions)"""
    model: Annotated[str | None, Flag(group=TARGET)] = None
    """the base model's name: for GET /models/{m}, and the OpenAI APIs' model for __base__ (default: the first
    the server lists)"""
    dataset: Annotated[str | None, Flag(group=WORKLOAD, metavar="FILE")] = None
    """prompts: JSONL of instruction/response rows, ShareGPT conversations, OpenAI messages or prompt/completion
    (or a JSON array of them), or an FAQ-layout CSV; default: the FAQ questions"""
    input_tokens: Annotated[float | None, Flag(group=WORKLOAD, metavar="MEAN")] = None
    """synthetic prompts instead of --dataset: their length in tokens (by --tokenizer) is drawn per request from a
    normal distribution with this mean"""
    input_tokens_stddev: Annotated[float, Flag(group=WORKLOAD, metavar="SD")] = 0.0
    """... and this standard deviation (0: every prompt has the mean's length)"""
    prefixes: Annotated[int, Flag(group=WORKLOAD, metavar="N")] = 0
    """N shared prefixes of --prefix-tokens tokens, each put before the prompts in turn (prefix caching)"""
    prefix_tokens: Annotated[int | None, Flag(group=WORKLOAD, metavar="L")] = None
    """the length of each shared prefix in tokens"""
    tokenizer: Annotated[str | None, Flag(group=WORKLOAD, metavar="DIR")] = None
    """the served model's tokenizer (a model folder, or default for the embedded model), to make and count
    prompts in tokens; default: the model folder the server reports, when it runs on this machine"""
    adapters: Annotated[list[str], Flag(csv=True, metavar="A,B,...", group=WORKLOAD)] = [BASE]
    """adapter names to spread requests over; __base__ is the base model"""
    mix: Annotated[Literal["round-robin", "uniform", "skewed"], Flag(group=WORKLOAD)] = "round-robin"
    """how requests are spread over --adapters (skewed: shares 1, 1/2, 1/3, ...)"""
    max_new_tokens: Annotated[list[int], Flag(csv=True, metavar="N[,N,...]", group=WORKLOAD)] = [64]
    """tokens per request (LMI's min_new_tokens is the same); several values: each request draws one (seeded),
    e.g. 16,32,64,128 for mixed output lengths"""
    max_new_tokens_stddev: Annotated[float, Flag(group=WORKLOAD, metavar="SD")] = 0.0
    """draw each request's output length from a normal distribution around --max-new-tokens (one value)"""
    output_lengths_from_dataset: Annotated[bool, Flag(group=WORKLOAD)] = False
    """each request asks for as many tokens as its data set row's reference answer has (as vLLM's ShareGPT
    benchmark)"""
    min_tokens: Annotated[bool, Flag(group=WORKLOAD)] = False
    """OpenAI APIs: send min_tokens = max_tokens (vLLM's extension, served by vLLM, loraship's handler and
    llama.cpp's Python server) so every reply has its full length, as LMI's min_new_tokens"""
    extra_body: Annotated[str | None, Flag(group=WORKLOAD, metavar="JSON")] = None
    """a JSON object laid over every request body, e.g. '{"ignore_eos": true}' for vLLM"""
    concurrency: Annotated[list[int], Flag(csv=True, metavar="C,C,...", group=LOAD)] = []
    """closed loop: a sweep of fixed concurrencies, e.g. 1,2,4,8"""
    rate: Annotated[list[float], Flag(csv=True, metavar="R,R,...", group=LOAD)] = []
    """open loop: arrivals at R requests/s (Poisson unless --burstiness, seeded), one level per rate"""
    burstiness: Annotated[float, Flag(group=LOAD, metavar="B")] = 1.0
    """with --rate: gaps between arrivals are gamma-distributed with shape B and mean 1/R (1: Poisson; below 1
    burstier, above 1 more even), as vLLM's --burstiness"""
    max_concurrency: Annotated[int | None, Flag(group=LOAD, metavar="N")] = None
    """with --rate: at most N requests in flight; an arrival waits for a free slot"""
    ramp_up: Annotated[float, Flag(group=LOAD, metavar="S")] = 0.0
    """seconds at the start of each level over which the load rises: --rate linearly from 0, --concurrency one
    worker after the other"""
    requests: Annotated[int | None, Flag(group=LOAD)] = None
    """requests per level"""
    duration: Annotated[float | None, Flag(group=LOAD)] = None
    """seconds per level (with --requests, whichever ends first)"""
    warmup: Annotated[int, Flag(group=LOAD)] = 2
    """requests sent first and not counted"""
    cold_probe: Annotated[bool, Flag(name="--no-cold-probe", group=LOAD)] = True
    """probe each adapter cold and warm (3 lone requests) before the load; --no-cold-probe skips it"""
    seed: Annotated[int, Flag(group=LOAD)] = 0
    """seed for prompts, lengths, prefixes, adapter draws and arrivals"""
    timeout: Annotated[float, Flag(group=LOAD)] = 300.0
    """seconds before a request counts as timed out"""
    stream: Annotated[bool, Flag(group=OUTPUTS)] = False
    """stream replies: measures TTFT, TPOT and ITL"""
    slo_ms: Annotated[dict[str, float], Flag(name="--slo", metavar="ttft=MS,tpot=MS,e2e=MS", group=OUTPUTS)] = {}
    """SLOs in ms for goodput"""
    out: Annotated[Path, Flag(group=OUTPUTS)]
    """folder for the results"""
    command: Annotated[list[str], Flag(hidden=True)] = []
    """The command line that started the run, for bench.json."""

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _lengths(cls, value):
        return [value] if isinstance(value, int | str) and not isinstance(value, bool) else value

    @field_validator("slo_ms", mode="before")
    @classmethod
    def _slo(cls, value):
        return parse_slo(value) if isinstance(value, str) else value

    @field_validator("extra_body")
    @classmethod
    def _extra(cls, value):
        if value is not None:
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise BenchError(f"is not JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise BenchError(f"must be a JSON object, got {type(parsed).__name__}")
        return value

    @property
    def extra(self) -> dict:
        return json.loads(self.extra_body) if self.extra_body else {}

    @property
    def synthetic(self) -> bool:
        """Whether the workload needs a tokenizer."""
        return any(getattr(self, name) for name in SYNTHETIC)

    def problems(self) -> list[str]:
        found = []
        if bool(self.url) == bool(self.sagemaker_endpoint):
            found.append("give exactly one of --url and --sagemaker-endpoint")
        if self.url and not self.url.startswith(("http://", "https://")):
            found.append(f"--url must start with http:// or https://, got {self.url!r}")
        if not self.sagemaker_endpoint:
            for name in ("region", "inference_component", "target_variant"):
                if getattr(self, name):
                    found.append(f"--{name.replace('_', '-')} is for --sagemaker-endpoint")
        elif self.endpoint:
            found.append("--endpoint is a path on --url; a SageMaker endpoint has its own")
        if bool(self.concurrency) == bool(self.rate):
            found.append("give exactly one of --concurrency and --rate")
        if any(c < 1 for c in self.concurrency):
            found.append("--concurrency values must be >= 1")
        if any(r <= 0 for r in self.rate):
            found.append("--rate values must be > 0")
        if self.burstiness <= 0:
            found.append(f"--burstiness must be > 0, got {self.burstiness:g}")
        elif self.burstiness != 1 and not self.rate:
            found.append("--burstiness shapes --rate's arrivals; --concurrency has none")
        if self.max_concurrency is not None:
            if self.max_concurrency < 1:
                found.append("--max-concurrency must be >= 1")
            elif not self.rate:
                found.append("--max-concurrency caps --rate's requests in flight; --concurrency is a cap already")
        if self.ramp_up < 0:
            found.append("--ramp-up must be >= 0")
        if self.requests is None and self.duration is None:
            found.append("give --requests, --duration or both")
        if self.requests is not None and self.requests < 1:
            found.append("--requests must be >= 1")
        if self.duration is not None and self.duration <= 0:
            found.append("--duration must be > 0")
        if not self.adapters or any(not a for a in self.adapters):
            found.append("--adapters needs one or more names (__base__ for the base model)")
        if not self.max_new_tokens or min(self.max_new_tokens) < 1:
            found.append("--max-new-tokens values must be >= 1")
        if self.max_new_tokens_stddev < 0:
            found.append("--max-new-tokens-stddev must be >= 0")
        elif self.max_new_tokens_stddev and len(self.max_new_tokens) != 1:
            found.append("--max-new-tokens-stddev draws around one --max-new-tokens value, not several")
        if self.output_lengths_from_dataset and (self.max_new_tokens_stddev or len(self.max_new_tokens) != 1):
            found.append("--output-lengths-from-dataset sets the lengths: give no --max-new-tokens list or stddev")
        if self.input_tokens is not None:
            if self.input_tokens < 1:
                found.append(f"--input-tokens must be >= 1, got {self.input_tokens:g}")
            if self.dataset:
                found.append("--input-tokens makes synthetic prompts; --dataset gives them: choose one")
            if self.output_lengths_from_dataset:
                found.append("--output-lengths-from-dataset needs a data set's answers; synthetic prompts have none")
        if self.input_tokens_stddev < 0:
            found.append("--input-tokens-stddev must be >= 0")
        elif self.input_tokens_stddev and self.input_tokens is None:
            found.append("--input-tokens-stddev needs --input-tokens (the mean)")
        if self.prefixes < 0:
            found.append("--prefixes must be >= 0")
        elif self.prefixes and (self.prefix_tokens is None or self.prefix_tokens < 1):
            found.append("--prefixes needs --prefix-tokens >= 1 (each prefix's length)")
        elif not self.prefixes and self.prefix_tokens is not None:
            found.append("--prefix-tokens needs --prefixes (how many)")
        if self.min_tokens and self.api == "lmi":
            found.append("--min-tokens is for the OpenAI APIs; LMI's min_new_tokens is always max_new_tokens")
        if self.warmup < 0:
            found.append("--warmup must be >= 0")
        unknown = sorted(set(self.slo_ms) - set(SLO_KEYS))
        if unknown:
            found.append(f"--slo knows {', '.join(SLO_KEYS)}, not {', '.join(unknown)}")
        if not self.stream and {"ttft", "tpot"} & set(self.slo_ms):
            found.append("--slo ttft/tpot need --stream (they are measured from streamed chunks)")
        return found

    def levels(self) -> list[Level]:
        if self.concurrency:
            return [Level("concurrency", c) for c in self.concurrency]
        return [Level("rate", r) for r in self.rate]

    def shape(self) -> Shape:
        return Shape(self.burstiness, self.max_concurrency, self.ramp_up)


def parse_slo(text: str | None) -> dict[str, float]:
    """``ttft=500,tpot=50,e2e=2000`` (milliseconds) -> {"ttft": 500.0, ...}."""
    slo = {}
    for part in filter(None, (text or "").split(",")):
        key, sep, value = part.partition("=")
        try:
            slo[key.strip()] = float(value)
        except ValueError:
            raise BenchError(f"takes KEY=MS pairs such as ttft=500,e2e=2000; got {part!r}") from None
        if not sep:
            raise BenchError(f"takes KEY=MS pairs, got {part!r}")
    return slo


# -- snapshots -------------------------------------------------------------------------------------


def _get_json(url: str, timeout: float = 10.0) -> dict:
    """A GET as a record: status and JSON body, or why it failed; never raises."""
    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        return {"available": False, "status": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        body = resp.json()
    except ValueError:
        body = resp.text[:500]
    return {"available": resp.status_code == 200, "status": resp.status_code, "body": body}


def server_snapshot(url: str, model: str | None, openai: bool = False) -> dict:
    """/ping, /models, /models/{m}, /models/{m}/adapters and /server/metrics as the server answered them
    (404s included), /v1/models for an OpenAI API, and ``model_summary``: what the report shows of them.
    ``model_name`` is ``model``, else the first /v1/models id (OpenAI), else DJL's first model."""
    base = url.rstrip("/")
    snap = {"kind": "http", "ping": _get_json(base + "/ping"), "models": _get_json(base + "/models")}
    snap["reachable"] = snap["ping"]["status"] is not None
    listed = snap["models"].get("body") if snap["models"]["available"] else None
    if openai:
        snap["openai_models"] = _get_json(base + "/v1/models")
        ids = snap["openai_models"].get("body") if snap["openai_models"]["available"] else None
        data = ids.get("data") if isinstance(ids, dict) else None
        if model is None and isinstance(data, list) and data and isinstance(data[0], dict):
            model = data[0].get("id")
    if model is None and isinstance(listed, dict) and listed.get("models"):
        model = listed["models"][0].get("modelName")
    snap["model_name"] = model
    none = {"available": False, "error": "no model name"}
    snap["model"] = _get_json(f"{base}/models/{model}") if model else none
    snap["adapters"] = _get_json(f"{base}/models/{model}/adapters") if model else none
    snap["metrics"] = _get_json(base + "/server/metrics")
    snap["model_summary"] = model_summary(
        snap["model"].get("body") if snap["model"]["available"] else None,
        snap["adapters"].get("body") if snap["adapters"]["available"] else None,
    )
    snap["serving_properties"] = _read_serving_properties(snap["model_summary"])
    return snap


NOT_ASKED = {"available": False, "status": None, "error": "not asked: a SageMaker endpoint"}


def sagemaker_snapshot(transport, model: str | None) -> dict:
    """A SageMaker endpoint as DescribeEndpoint gives it (status, config, variants), or why it could not be read
    (the run goes on: invoking needs fewer permissions than describing); the HTTP server's keys, not asked."""
    import boto3

    desc = {"available": False, "status": None}
    try:
        sm = boto3.session.Session().client("sagemaker", region_name=transport.region)
        body = sm.describe_endpoint(EndpointName=transport.endpoint)
        body.pop("ResponseMetadata", None)
        desc = {"available": True, "status": 200, "body": json.loads(json.dumps(body, default=str))}
    except Exception as exc:  # botocore's ClientError, NoCredentialsError, ... : recorded, never fatal
        desc["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return {
        "kind": "sagemaker",
        "reachable": None,
        "sagemaker": {**transport.describe(), "describe_endpoint": desc},
        "ping": NOT_ASKED,
        "models": NOT_ASKED,
        "model": NOT_ASKED,
        "adapters": NOT_ASKED,
        "metrics": {**NOT_ASKED, "error": "not asked: a SageMaker endpoint's metrics are in CloudWatch"},
        "model_name": model,
        "model_summary": None,
        "serving_properties": None,
    }


def served_tokenizer(server: dict) -> str | None:
    """The served model's folder when the server runs on this machine: serving.properties' option.model_id when it
    names a folder with a tokenizer (absolute, or inside the model dir), else the model dir if it has one."""
    summary = server.get("model_summary") or {}
    model_dir = summary.get("modelDir")
    if not model_dir:
        return None
    candidates = []
    for line in (server.get("serving_properties") or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "option.model_id":
            candidates.append(Path(model_dir) / value.strip())  # an absolute value replaces the dir
    candidates.append(Path(model_dir))
    for path in candidates:
        if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
            return str(path)
    return None


def model_summary(describe, adapters) -> dict | None:
    """The model as DJL Serving describes it: ``describe`` is GET /models/{m} (a list of workflows, each
    with its models: DJL's DescribeWorkflowResponse), ``adapters`` GET /models/{m}/adapters (its first
    page: DJL lists 100 at most). None when ``describe`` has not that shape."""
    if not isinstance(describe, list) or not describe or not isinstance(describe[0], dict):
        return None
    models = describe[0].get("models")
    if not isinstance(models, list) or not models or not isinstance(models[0], dict):
        return None
    m = models[0]
    workers = [w for g in m.get("workerGroups") or [] if isinstance(g, dict) for w in g.get("workers") or []]
    listed = adapters.get("adapters") if isinstance(adapters, dict) else None
    names = sorted(str(a.get("name")) for a in listed if isinstance(a, dict)) if isinstance(listed, list) else None
    url = m.get("modelUrl")
    parsed = urllib.parse.urlparse(url) if isinstance(url, str) else None
    model_dir = urllib.parse.unquote(parsed.path) if parsed and parsed.scheme == "file" else None
    return {
        "modelName": m.get("modelName"),
        "status": m.get("status"),
        "batchSize": m.get("batchSize"),
        "maxBatchDelayMillis": m.get("maxBatchDelayMillis"),
        "workers": len(workers),
        "adapters": names,
        "modelDir": model_dir,
    }


def _read_serving_properties(summary) -> str | None:
    """The model dir's serving.properties when the server runs on this machine (its modelUrl names the dir)."""
    if not isinstance(summary, dict) or not summary.get("modelDir"):
        return None
    path = Path(summary["modelDir"]) / "serving.properties"
    try:
        return path.read_text()
    except OSError:
        return None


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    from loraship.core.paths import source_checkout

    tree = source_checkout()
    if tree is None:  # an installed wheel: no git history to describe
        return None
    try:
        out = subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def versions() -> dict:
    import loraship

    status = _git("status", "--porcelain")
    return {
        "loraship": loraship.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        **{pkg: _version(pkg) for pkg in ("requests", "urllib3", "numpy", "matplotlib", "tqdm")},
    }


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: on a shared machine they say how noisy the figures are."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine() -> dict:
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": mem,
        "load_average": load_average(),
    }


# -- the run ---------------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _level_result(
    run: LevelRun, slo_ms: dict, url: str | None = None, before: dict | None = None, ramp_up: float = 0.0
) -> dict:
    result = {
        "mode": run.level.mode,
        "value": run.level.value,
        "label": run.level.label,
        "interrupted": run.interrupted,
        "abandoned": run.abandoned,
        "max_in_flight": run.max_in_flight,
        **summarize_level(run.records, run.wall_s, slo_ms),
        "workload": realised(run.records, ramp_up, run.max_in_flight),
    }
    if before is not None:
        # The server's view of the same level: its metrics' change, and the latency split they give.
        answered = sum(r.http_status is not None for r in run.records)
        after = settled_snapshot(url, before, answered) if before["available"] and url else before
        result["server_metrics"] = difference(before, after)
        result["latency_split"] = latency_split(result["server_metrics"], result)
    return result


def _transport(cfg: BenchConfig):
    """HTTP to --url + the path, or the SageMaker endpoint through boto3 (its pool sized for the load)."""
    if not cfg.sagemaker_endpoint:
        path = cfg.endpoint or PATHS[cfg.api]
        return HttpTransport(cfg.url.rstrip("/") + "/" + path.lstrip("/"), cfg.timeout)
    top = max(cfg.concurrency or [cfg.max_concurrency or 64])
    try:
        return SageMakerTransport(
            cfg.sagemaker_endpoint, cfg.region, cfg.inference_component, cfg.target_variant, cfg.timeout, top
        )
    except Exception as exc:  # botocore: no region, a bad profile ...
        raise BenchError(f"--sagemaker-endpoint: {type(exc).__name__}: {exc}") from None


def run_bench(cfg: BenchConfig, log=print) -> dict:
    """Run the benchmark, write its outputs into ``cfg.out`` and return bench.json's content."""
    from .report import write_outputs

    problems = cfg.problems()
    if problems:
        raise BenchError("; ".join(problems))
    rows, data_format = load_rows(cfg.dataset)
    openai = cfg.api != "lmi"
    transport = _transport(cfg)
    if cfg.sagemaker_endpoint:
        server = sagemaker_snapshot(transport, cfg.model)
    else:
        server = server_snapshot(cfg.url, cfg.model, openai)
    tokenizer = cfg.tokenizer or (served_tokenizer(server) if cfg.synthetic else None)
    if cfg.synthetic and tokenizer is None:
        where = "a SageMaker endpoint" if cfg.sagemaker_endpoint else "the server did not name a model folder here"
        raise BenchError(
            "--input-tokens, --prefixes and --output-lengths-from-dataset count tokens: give --tokenizer "
            f"(the served model's folder, or default for the embedded model); {where}"
        )
    tokens = Tokens(tokenizer, corpus=faq_corpus()) if tokenizer else None
    workload = Workload(
        rows,
        cfg.adapters,
        cfg.mix,
        cfg.seed,
        lengths=cfg.max_new_tokens,
        length_stddev=cfg.max_new_tokens_stddev,
        lengths_from_dataset=cfg.output_lengths_from_dataset,
        input_tokens=(cfg.input_tokens, cfg.input_tokens_stddev) if cfg.input_tokens is not None else None,
        prefixes=cfg.prefixes,
        prefix_tokens=cfg.prefix_tokens or 0,
        tokens=tokens,
    )
    # The OpenAI APIs name the base model in every request: --model, else what the server lists.
    api_model = server.get("model_name") if openai else None
    schema = make_api(cfg.api, api_model, cfg.extra, tokens.count if tokens else None, min_tokens=cfg.min_tokens)
    client = Client(schema, transport, max_new_tokens=cfg.max_new_tokens[0], stream=cfg.stream)
    result = {
        "schema": SCHEMA,
        "command": cfg.command,
        "started_at": _now(),
        "finished_at": None,
        "interrupted": False,
        "versions": versions(),
        "machine": machine(),
        "config": {**cfg.model_dump(mode="json"), "prompts": len(rows)},
        "target": {**client.transport.describe(), "api": cfg.api, "model": api_model},
        "workload": {
            "parameters": {
                **workload.describe(),
                "dataset": cfg.dataset,
                "dataset_format": None if cfg.input_tokens is not None else data_format,
                "arrivals": _arrivals(cfg),
            },
        },
    }
    result["server"] = server
    if result["server"]["reachable"] is False:
        log(
            f"loraship bench: warning: {cfg.url}/ping did not answer ({result['server']['ping'].get('error')}); "
            "requests will be sent and their failures recorded"
        )
    if not result["server"]["metrics"]["available"] and not cfg.sagemaker_endpoint:
        log(
            f"loraship bench: /server/metrics unavailable (HTTP {result['server']['metrics']['status']}); "
            "recorded as such"
        )

    stop = threading.Event()
    t0 = time.perf_counter()
    all_records: list[RequestRecord] = []
    probe, levels = [], []
    try:
        if cfg.cold_probe and not stop.is_set():
            probe = _probe(client, workload, cfg, t0, stop)
            all_records += probe
        if cfg.warmup and not stop.is_set():
            warm = run_level(
                client,
                workload.items("warmup"),
                Level("concurrency", min(cfg.warmup, _top(cfg))),
                t0=t0,
                requests=cfg.warmup,
                stop=stop,
                phase="warmup",
                seed=cfg.seed,
            )
            all_records += warm.records
        for level in cfg.levels():
            if stop.is_set():
                break
            before = snapshot(cfg.url) if cfg.url else result["server"]["metrics"]
            run = run_level(
                client,
                workload.items(level.label),
                level,
                t0=t0,
                requests=cfg.requests,
                duration=cfg.duration,
                stop=stop,
                seed=cfg.seed,
                shape=cfg.shape(),
            )
            all_records += run.records
            levels.append(_level_result(run, cfg.slo_ms, cfg.url, before, cfg.ramp_up))
            log(_one_line(levels[-1]))
    except KeyboardInterrupt:
        stop.set()
    result["interrupted"] = stop.is_set()
    result["cold_warm"] = cold_warm(probe)
    result["levels"] = levels
    measured = [r for r in all_records if r.phase == "measure"]
    result["workload"]["realised"] = realised(
        measured, cfg.ramp_up, max((lv["max_in_flight"] for lv in levels), default=0)
    )
    result["server_after"] = {"ping": _get_json(cfg.url.rstrip("/") + "/ping") if cfg.url else NOT_ASKED}
    result["machine"]["load_average_after"] = load_average()
    result["finished_at"] = _now()
    write_outputs(result, all_records, cfg.out)
    return result


def _arrivals(cfg: BenchConfig) -> dict:
    if cfg.concurrency:
        return {"process": "closed-loop", "concurrency": cfg.concurrency, "ramp_up_s": cfg.ramp_up}
    return {
        "process": "poisson" if cfg.burstiness == 1 else "gamma",
        "rate": cfg.rate,
        "burstiness": cfg.burstiness,
        "gap_cv": 1 / cfg.burstiness**0.5,  # a gamma gap's coefficient of variation, 1/sqrt(shape)
        "max_concurrency": cfg.max_concurrency,
        "ramp_up_s": cfg.ramp_up,
    }


def _top(cfg: BenchConfig) -> int:
    return max(cfg.concurrency) if cfg.concurrency else 1


def _probe(client: Client, workload: Workload, cfg: BenchConfig, t0: float, stop: threading.Event) -> list:
    """Per adapter, one request then PROBE_WARM_SAMPLES more, one at a time: cold vs warm latency.
    All with the same prompt, so only the adapter's state differs."""
    records = []
    prompt = next(workload.items("probe")).prompt
    index = 0
    for adapter in cfg.adapters:
        for _ in range(1 + PROBE_WARM_SAMPLES):
            if stop.is_set():
                return records
            rec = RequestRecord(index=index, phase="probe", level=None, adapter=adapter, stream=cfg.stream)
            records.append(client.send(rec, prompt, t0))
            index += 1
    return records


def _one_line(level: dict) -> str:
    def fmt(v, spec=".2f", unit=""):
        return "n/a" if v is None else format(v, spec) + unit

    e2e = level["latency"]["e2e_s"]
    errors = {k: v for k, v in level["status_counts"].items() if k != "200"}
    split = level.get("latency_split")
    server = (
        f"; server: queue {fmt(split['queue_s'], '.3f', 's')}, inference {fmt(split['inference_s'], '.3f', 's')}"
        + (f", DJL queue {fmt(split['server_queue_s'], '.3f', 's')}" if split["server_queue_s"] is not None else "")
        if split
        else ""
    )
    return (
        f"{level['label']}: {level['ok']}/{level['requests']} ok, {fmt(level['requests_per_s'])} req/s, "
        f"{fmt(level['output_tokens_per_s'], '.1f')} out tok/s, e2e p50 {fmt(e2e['p50'], unit='s')} "
        f"p99 {fmt(e2e['p99'], unit='s')}, errors {errors or 0}{server}"
    )


def exit_code(result: dict) -> int:
    """0: measured; 1: nothing succeeded (bad URL, dead server); 130: stopped by Ctrl-C."""
    if result["interrupted"]:
        return 130
    if not any(level["ok"] for level in result["levels"]):
        return 1
    return 0
