"""One benchmark run, start to finish: snapshot the server, probe adapters cold and warm, warm up,
run each level, then write bench.json, requests.jsonl, summary.md and the plots.

Ctrl-C stops the run cleanly: the level in progress keeps what it measured, later levels are
skipped, and every output is still written (``interrupted: true`` in bench.json).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
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

from .client import Client, RequestRecord
from .load import Level, LevelRun, run_level
from .server_metrics import difference, latency_split, settled_snapshot, snapshot
from .stats import SLO_KEYS, cold_warm, summarize_level
from .workload import BASE, Workload, load_prompts

SCHEMA = "loraship.bench/1"
PROBE_WARM_SAMPLES = 2


class BenchError(LorashipError, ValueError):
    """A setting is wrong (a ValueError too, so that pydantic reports it with the others)."""


class BenchConfig(Settings):
    """What to run; ``problems()`` lists every invalid setting at once. The fields are the flags of
    ``loraship bench``; each docstring is its help."""

    url: Annotated[str, Flag(group="target")]
    """the server, e.g. http://127.0.0.1:8080"""
    model: Annotated[str | None, Flag(group="target")] = None
    """model name for GET /models/{m} (default: the first the server lists)"""
    endpoint: Annotated[str, Flag(group="target")] = "/invocations"
    """path requests are POSTed to"""
    dataset: Annotated[str | None, Flag(group="workload")] = None
    """JSONL (instruction/response) or FAQ-layout CSV; default: the FAQ questions"""
    adapters: Annotated[list[str], Flag(csv=True, metavar="A,B,...", group="workload")] = [BASE]
    """adapter names to spread requests over; __base__ is the base model"""
    mix: Annotated[Literal["round-robin", "uniform", "skewed"], Flag(group="workload")] = "round-robin"
    """how requests are spread over --adapters (skewed: shares 1, 1/2, 1/3, ...)"""
    max_new_tokens: Annotated[list[int], Flag(csv=True, metavar="N[,N,...]", group="workload")] = [64]
    """tokens per request (min_new_tokens is the same); several values: each request draws one (seeded), e.g.
    16,32,64,128 for mixed output lengths"""
    concurrency: Annotated[list[int], Flag(csv=True, metavar="C,C,...", group="load")] = []
    """closed loop: a sweep of fixed concurrencies, e.g. 1,2,4,8"""
    rate: Annotated[list[float], Flag(csv=True, metavar="R,R,...", group="load")] = []
    """open loop: Poisson arrivals at R requests/s (seeded), one level per rate"""
    requests: Annotated[int | None, Flag(group="load")] = None
    """requests per level"""
    duration: Annotated[float | None, Flag(group="load")] = None
    """seconds per level (with --requests, whichever ends first)"""
    warmup: Annotated[int, Flag(group="load")] = 2
    """requests sent first and not counted"""
    cold_probe: Annotated[bool, Flag(name="--no-cold-probe", group="load")] = True
    """probe each adapter cold and warm (3 lone requests) before the load; --no-cold-probe skips it"""
    seed: Annotated[int, Flag(group="load")] = 0
    """seed for prompt order, adapter draws and arrivals"""
    timeout: Annotated[float, Flag(group="load")] = 300.0
    """seconds before a request counts as timed out"""
    stream: Annotated[bool, Flag(group="measurement")] = False
    """stream replies: measures TTFT, TPOT and ITL"""
    slo_ms: Annotated[dict[str, float], Flag(name="--slo", metavar="ttft=MS,tpot=MS,e2e=MS", group="measurement")] = {}
    """SLOs in ms for goodput"""
    out: Annotated[Path, Flag(group="outputs")]
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

    def problems(self) -> list[str]:
        found = []
        if bool(self.concurrency) == bool(self.rate):
            found.append("give exactly one of --concurrency and --rate")
        if any(c < 1 for c in self.concurrency):
            found.append("--concurrency values must be >= 1")
        if any(r <= 0 for r in self.rate):
            found.append("--rate values must be > 0")
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
        if self.warmup < 0:
            found.append("--warmup must be >= 0")
        unknown = sorted(set(self.slo_ms) - set(SLO_KEYS))
        if unknown:
            found.append(f"--slo knows {', '.join(SLO_KEYS)}, not {', '.join(unknown)}")
        if not self.stream and {"ttft", "tpot"} & set(self.slo_ms):
            found.append("--slo ttft/tpot need --stream (they are measured from streamed chunks)")
        if not self.url.startswith(("http://", "https://")):
            found.append(f"--url must start with http:// or https://, got {self.url!r}")
        return found

    def levels(self) -> list[Level]:
        if self.concurrency:
            return [Level("concurrency", c) for c in self.concurrency]
        return [Level("rate", r) for r in self.rate]


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


def server_snapshot(url: str, model: str | None) -> dict:
    """/ping, /models, /models/{m}, /models/{m}/adapters and /server/metrics as the server answered them
    (404s included), and ``model_summary``: what the report shows of them."""
    base = url.rstrip("/")
    snap = {"ping": _get_json(base + "/ping"), "models": _get_json(base + "/models")}
    snap["reachable"] = snap["ping"]["status"] is not None
    listed = snap["models"].get("body") if snap["models"]["available"] else None
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


def _level_result(run: LevelRun, slo_ms: dict, url: str | None = None, before: dict | None = None) -> dict:
    result = {
        "mode": run.level.mode,
        "value": run.level.value,
        "label": run.level.label,
        "interrupted": run.interrupted,
        "abandoned": run.abandoned,
        **summarize_level(run.records, run.wall_s, slo_ms),
    }
    if before is not None:
        # The server's view of the same level: its metrics' change, and the latency split they give.
        answered = sum(r.http_status is not None for r in run.records)
        after = settled_snapshot(url, before, answered) if before["available"] else before
        result["server_metrics"] = difference(before, after)
        result["latency_split"] = latency_split(result["server_metrics"], result)
    return result


def run_bench(cfg: BenchConfig, log=print) -> dict:
    """Run the benchmark, write its outputs into ``cfg.out`` and return bench.json's content."""
    from .report import write_outputs

    problems = cfg.problems()
    if problems:
        raise BenchError("; ".join(problems))
    prompts = load_prompts(cfg.dataset)
    workload = Workload(prompts, cfg.adapters, cfg.mix, cfg.seed, lengths=cfg.max_new_tokens)
    client = Client(cfg.url, cfg.endpoint, max_new_tokens=cfg.max_new_tokens[0], stream=cfg.stream, timeout=cfg.timeout)
    result = {
        "schema": SCHEMA,
        "command": cfg.command,
        "started_at": _now(),
        "finished_at": None,
        "interrupted": False,
        "versions": versions(),
        "machine": machine(),
        "config": {**cfg.model_dump(mode="json"), "prompts": len(prompts)},
    }
    result["server"] = server_snapshot(cfg.url, cfg.model)
    if not result["server"]["reachable"]:
        log(
            f"loraship bench: warning: {cfg.url}/ping did not answer ({result['server']['ping'].get('error')}); "
            "requests will be sent and their failures recorded"
        )
    if not result["server"]["metrics"]["available"]:
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
            before = snapshot(cfg.url)
            run = run_level(
                client,
                workload.items(level.label),
                level,
                t0=t0,
                requests=cfg.requests,
                duration=cfg.duration,
                stop=stop,
                seed=cfg.seed,
            )
            all_records += run.records
            levels.append(_level_result(run, cfg.slo_ms, cfg.url, before))
            log(_one_line(levels[-1]))
    except KeyboardInterrupt:
        stop.set()
    result["interrupted"] = stop.is_set()
    result["cold_warm"] = cold_warm(probe)
    result["levels"] = levels
    result["server_after"] = {"ping": _get_json(cfg.url.rstrip("/") + "/ping")}
    result["machine"]["load_average_after"] = load_average()
    result["finished_at"] = _now()
    write_outputs(result, all_records, cfg.out)
    return result


def _top(cfg: BenchConfig) -> int:
    return max(cfg.concurrency) if cfg.concurrency else 1


def _probe(client: Client, workload: Workload, cfg: BenchConfig, t0: float, stop: threading.Event) -> list:
    """Per adapter, one request then PROBE_WARM_SAMPLES more, one at a time: cold vs warm latency.
    All with the same prompt, so only the adapter's state differs."""
    records = []
    prompt, _, _ = next(workload.items("probe"))
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
