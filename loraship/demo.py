"""``loraship demo``: the whole lifecycle on the embedded default model, on this machine.

Each step runs the real ``loraship`` command (so ``report.md`` can list the exact commands to
repeat it), shows its progress, and stops the run with the step's name when it fails. Training
and evaluation outputs live in ``runs/cache/`` under a key of their inputs (config, data, base
model, code) and are reused when the inputs did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .core.errors import Failed
from .core.hashing import file_sha256, tree_sha256
from .core.models import prepare_default
from .evaluation.gate import DEFAULT_POLICY as POLICY
from .runtime import Server, ServerChoice, free_port
from .training.config import CONFIGS_DIR

TRAIN_CONFIG = CONFIGS_DIR / "sagemaker_faqs.yaml"
ADAPTER = "faq"


class StepFailed(Failed):
    def __init__(self, step: str, message: str):
        super().__init__(f"step '{step}' failed: {message}")
        self.step = step


@dataclass
class Demo:
    run_dir: Path
    port: int
    questions: int
    server: dict = field(default_factory=dict)
    commands: list[tuple[str, str]] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    timings: list[tuple[str, float, str]] = field(default_factory=list)

    # -- plumbing ------------------------------------------------------------------------------
    def step(self, name: str):
        print(f"\n== {name}", flush=True)
        return _Timer(self, name)

    def run(self, step: str, args: list[str], ok_codes=(0,)) -> int:
        """Run ``loraship ARGS``, showing its output and keeping it in logs/<step>.log."""
        cmd = [sys.executable, "-m", "loraship.cli", *args]
        self.commands.append((step, "loraship " + " ".join(shlex.quote(a) for a in args)))
        log_path = self.run_dir / "logs" / f"{step}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for chunk in iter(lambda: os.read(proc.stdout.fileno(), 4096), b""):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log.write(chunk)
            code = proc.wait()
        if code not in ok_codes:
            raise StepFailed(step, f"`loraship {args[0]}` exited with {code}; see {log_path}")
        return code

    # -- the lifecycle -------------------------------------------------------------------------
    def main(self) -> None:
        with self.step("1/9 prepare the embedded default model"):
            base = prepare_default()
            print(base)
            self.commands.append(("prepare", "loraship models prepare"))

        cache = self.run_dir.parent / "cache"  # beside the runs, so a second demo reuses training and eval
        # Training depends on the handler only through the prompt template.
        train_key = _key(
            file_sha256(TRAIN_CONFIG),
            tree_sha256(base),
            _code_sha256("training"),
            file_sha256(_package_dir("handler") / "pipelines" / "instruction.py"),
        )
        train_out = cache / f"train-{train_key}"
        with self.step("2/9 train a LoRA adapter on the SageMaker FAQs") as t:
            if (train_out / "training_manifest.json").is_file():
                t.note = "reused"
                print(f"reusing {train_out} (config, data, base model and code unchanged)")
                self.commands.append(
                    ("train", f"loraship train --config {_rel(TRAIN_CONFIG)} --output {_rel(train_out)}")
                )
            else:
                self.run("train", ["train", "--config", str(TRAIN_CONFIG), "--output", str(train_out), "--overwrite"])
        manifest = json.loads((train_out / "training_manifest.json").read_text())
        self.figures["train"] = manifest

        eval_key = _key(train_key, _code_sha256("evaluation"), _code_sha256("handler"))
        eval_out = cache / f"eval-{eval_key}"
        with self.step("3/9 evaluate base vs adapter on the held-out split") as t:
            if (eval_out / "eval.json").is_file():
                t.note = "reused"
                print(f"reusing {eval_out}")
                self.commands.append(
                    (
                        "eval",
                        f"loraship eval --split-from {_rel(train_out)} "
                        f"--adapter {ADAPTER}={_rel(train_out)} --out {_rel(eval_out)}",
                    )
                )
            else:
                self.run(
                    "eval",
                    [
                        "eval",
                        "--split-from",
                        str(train_out),
                        "--adapter",
                        f"{ADAPTER}={train_out}",
                        "--out",
                        str(eval_out),
                    ],
                )
        self.figures["eval"] = json.loads((eval_out / "eval.json").read_text())

        model_dir = self.run_dir / "model"
        log = open(self.run_dir / "logs" / "server.log", "w")
        server = None
        try:
            with self.step("4/9 build a DJL model dir with the adapter and serve it"):
                self.run(
                    "build",
                    [
                        "build",
                        "--model",
                        "default",
                        "--adapter",
                        f"{ADAPTER}={train_out}",
                        "--batching",
                        "continuous",
                        "--out",
                        str(model_dir),
                    ],
                )
                server = Server(model_dir, port=self.port or free_port(), log_file=log, **self.server)
                self.commands.append(
                    ("serve", f"loraship serve {_rel(model_dir)} --port {server.port} --server {server.kind}")
                )
                print(f"{server.name} ready at {server.url} in {server.wait_ready():.1f}s (log: {log.name})")
            with self.step("5/9 smoke: held-out questions, base vs adapter"):
                self.smoke(server.url, train_out)
            with self.step("6/9 bench a short sweep (concurrency 1, 4, 8) on base and adapter"):
                self.run(
                    "bench",
                    [
                        "bench",
                        "--url",
                        server.url,
                        "--concurrency",
                        "1,4,8",
                        "--requests",
                        "8",
                        "--max-new-tokens",
                        "32",
                        "--adapters",
                        f"__base__,{ADAPTER}",
                        "--mix",
                        "round-robin",
                        "--stream",
                        "--warmup",
                        "2",
                        "--out",
                        str(self.run_dir / "bench"),
                    ],
                )
        finally:
            if server is not None:
                server.stop()
            log.close()
        self.figures["bench"] = json.loads((self.run_dir / "bench" / "bench.json").read_text())

        with self.step("7/9 gate on eval and bench with the default policy"):
            code = self.run(
                "gate",
                [
                    "gate",
                    "--eval",
                    str(eval_out / "eval.json"),
                    "--policy",
                    str(POLICY),
                    "--bench",
                    str(self.run_dir / "bench" / "bench.json"),
                    "--adapter",
                    f"{ADAPTER}={model_dir / 'adapters' / ADAPTER}",
                    "--out",
                    str(self.run_dir / "gate"),
                ],
                ok_codes=(0, 1),
            )
        self.figures["gate"] = json.loads((self.run_dir / "gate" / "gate.json").read_text())
        passed = code == 0

        with self.step("8/9 package the artifact and plan the rollout (dry run)"):
            self.run(
                "package", ["package", str(model_dir), "--include-model", "--out", str(self.run_dir / "model.tar.gz")]
            )
            rollout = [
                "rollout",
                "--artifact",
                str(self.run_dir / "model.tar.gz"),
                "--gate-report",
                str(self.run_dir / "gate" / "gate.json"),
                "--bucket",
                "loraship-demo",
                "--endpoint-name",
                "loraship-demo",
                "--role",
                "arn:aws:iam::123456789012:role/loraship-demo",
                "--region",
                "us-east-1",
                "--dry-run",
            ]
            # A failed gate must make the rollout refuse: that refusal is the expected outcome then.
            code = self.run("rollout", rollout, ok_codes=(0,) if passed else (1, 2))
            self.figures["rollout_refused"] = code != 0

    def smoke(self, url: str, train_out: Path) -> None:
        rows = [json.loads(line) for line in (train_out / "split" / "test.jsonl").read_text().splitlines()][
            : self.questions
        ]
        answers = []
        for row in rows:
            pair = {}
            for adapter in ("__base__", ADAPTER):
                status, body, seconds = post_json(
                    url + "/invocations",
                    {
                        "inputs": row["instruction"],
                        "adapters": adapter,
                        "parameters": {"max_new_tokens": 96, "details": True},
                    },
                )
                if status != 200:
                    raise StepFailed("smoke", f"HTTP {status}: {body}")
                pair[adapter] = {
                    "text": body["generated_text"],
                    "seconds": seconds,
                    "finish_reason": body["details"]["finish_reason"],
                }
            answers.append({"question": row["instruction"], "reference": row["response"], **pair})
            print(
                f"\nQ: {row['instruction']}\n  base    ({pair['__base__']['seconds']:.1f}s): "
                f"{_clip(pair['__base__']['text'])}\n  adapter ({pair[ADAPTER]['seconds']:.1f}s): "
                f"{_clip(pair[ADAPTER]['text'])}"
            )
        self.figures["smoke"] = answers


class _Timer:
    def __init__(self, demo: Demo, name: str):
        self.demo, self.name, self.note = demo, name, ""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.demo.timings.append(
            (self.name, time.perf_counter() - self.start, self.note or ("failed" if exc_type else "ran"))
        )
        if exc_type is not None and not issubclass(exc_type, (StepFailed, KeyboardInterrupt)):
            # Any error inside a step stops the run under that step's name.
            raise StepFailed(self.name, f"{exc_type.__name__}: {exc}") from exc


def post_json(url: str, body: dict, timeout: float = 600) -> tuple[int, dict, float]:
    """POST JSON; return (status, parsed body, seconds)."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    return status, json.loads(raw or b"{}"), time.perf_counter() - start


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _rel(path: Path) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _clip(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


class DemoOptions(ServerChoice):
    port: int = 0
    """port for the demo server (default: a free one)"""
    questions: int = 3
    """how many FAQ questions to ask"""


def run_demo(port: int = 0, questions: int = 3, server: dict | None = None) -> int:
    # Where the user is, never beside the installed code.
    run_dir = Path.cwd() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    demo = Demo(run_dir, port, questions, server or {})
    start = time.perf_counter()
    try:
        demo.main()
    except StepFailed as exc:
        print(f"\nloraship demo: {exc}", file=sys.stderr)
        _write_report(demo, time.perf_counter() - start, failed=str(exc))
        return 1
    path = _write_report(demo, time.perf_counter() - start)
    print(f"\n== 9/9 done in {time.perf_counter() - start:.0f}s; report: {path}")
    return 0


def _write_report(demo: Demo, seconds: float, failed: str | None = None) -> Path:
    from .report import demo_report

    path = demo.run_dir / "report.md"
    path.write_text(demo_report(demo, seconds, failed))
    return path


def _package_dir(name: str) -> Path:
    """Where loraship.NAME's code is: the checkout's top-level folder, or inside the installed package."""
    import importlib

    return Path(importlib.import_module(f"loraship.{name}").__file__).resolve().parent


def _code_sha256(name: str) -> str:
    return tree_sha256(_package_dir(name))
