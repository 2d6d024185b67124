"""``loraship <command>``: one table maps command names to functions; their docstrings are the help."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..core.errors import EXIT_INTERRUPTED, LorashipError, UsageError


def cmd_models_prepare(args) -> int:
    """Convert the embedded default model (SmolLM2-135M-Instruct GGUF) to an HF folder; print its path."""
    from ..core.models import prepare_default

    print(prepare_default(force=args.force))
    return 0


def cmd_build(args) -> int:
    """Write a DJL Serving model dir: serving.properties, model.py, the handler, adapters."""
    from ..build import build_model_dir, parse_adapter_args

    options = dict(_pair(o, "--option") for o in args.option)
    out = build_model_dir(
        args.model,
        args.out,
        parse_adapter_args(args.adapter),
        pipeline=args.pipeline,
        batch_size=args.batch_size,
        max_batch_delay=args.max_batch_delay,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        predict_timeout=args.predict_timeout,
        retry_threshold=args.retry_threshold,
        options=options,
        overwrite=args.overwrite,
    )
    print(out)
    return 0


def cmd_serve(args) -> int:
    """Run DJL Serving on a model dir until it stops or Ctrl-C; print the URL once /ping answers."""
    import signal

    from ..runtime import Server

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Also when started in the background, where SIGINT arrives ignored; SIGTERM stops it the same way.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    server = Server(args.model_dir, host=args.host, port=args.port, **_server_opts(args))
    try:
        took = server.wait_ready(timeout=args.timeout)
        print(
            f"loraship: {server.name} serving {args.model_dir} as model {server.model_name} at {server.url} "
            f"(ready in {took:.1f}s)",
            flush=True,
        )
        return server.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def cmd_train(args) -> int:
    """Train a LoRA adapter from a YAML config (training/configs/); resumable, servable by build.
    With --sagemaker, run the same config as a SageMaker training job."""
    sagemaker_only = [flag for flag, value in _sagemaker_flags(args) if value not in (None, False)]
    if not args.sagemaker:
        if sagemaker_only:
            return _usage("train", f"{', '.join(sagemaker_only)}: only with --sagemaker")
        from loraship.training.recipe import run_cli

        return run_cli(args.config, args.output, args.set, resume=args.resume, overwrite=args.overwrite)
    if args.resume or args.overwrite:
        return _usage(
            "train", "--resume and --overwrite are for local runs: a SageMaker job resumes from its own checkpoints"
        )
    if args.output and not args.wait:
        return _usage("train", "--output with --sagemaker is where --wait puts the adapter: add --wait")

    import json

    from loraship.training.recipe import DEFAULT_CONFIG
    from loraship.training.sagemaker import (
        DEFAULT_INSTANCE_TYPE,
        DEFAULT_MAX_RUN,
        JobOptions,
        run_job,
    )

    opts = JobOptions(
        config=Path(args.config) if args.config else DEFAULT_CONFIG,
        overrides=args.set,
        role=args.role,
        bucket=args.bucket,
        instance_type=args.instance_type or DEFAULT_INSTANCE_TYPE,
        region=args.region,
        endpoint_url=args.endpoint_url,
        job_name=args.job_name,
        image_uri=args.image_uri,
        spot=args.spot,
        max_run=DEFAULT_MAX_RUN if args.max_run is None else args.max_run,
        wait=args.wait,
        output=Path(args.output) if args.output else None,
    )
    result = run_job(opts, dry_run=args.dry_run)  # on Ctrl-C it says what was left behind
    print(json.dumps(result, indent=2))
    return 0


def _sagemaker_flags(args) -> list[tuple[str, object]]:
    return [
        ("--instance-type", args.instance_type),
        ("--role", args.role),
        ("--bucket", args.bucket),
        ("--region", args.region),
        ("--endpoint-url", args.endpoint_url),
        ("--job-name", args.job_name),
        ("--image-uri", args.image_uri),
        ("--spot", args.spot),
        ("--max-run", args.max_run),
        ("--wait", args.wait),
        ("--dry-run", args.dry_run),
    ]


def _usage(command: str, message: str) -> int:
    print(f"loraship {command}: error: {message}", file=sys.stderr)
    return 2


def cmd_eval(args) -> int:
    """Score the base model and adapters on the same documents with lm-eval; write eval.json and samples/."""
    from loraship.evaluation.score import EvalConfig, run_eval

    from ..build import parse_adapter_args

    adapters = parse_adapter_args(args.adapter)
    if not adapters and args.split_from and Path(args.split_from, "adapter_config.json").is_file():
        adapters = parse_adapter_args([f"{_adapter_name(args.split_from)}={args.split_from}"])
    if not adapters:
        print(
            "loraship eval: error: give --adapter NAME=DIR (or --split-from a training output that holds one)",
            file=sys.stderr,
        )
        return 2
    cfg = EvalConfig(
        out=Path(args.out),
        model=args.model,
        adapters=adapters,
        data=Path(args.data) if args.data else None,
        split_from=Path(args.split_from) if args.split_from else None,
        endpoint=args.endpoint,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        bootstrap_iterations=args.bootstrap,
        seed=args.seed,
        device=args.device,
    )
    result = run_eval(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    for metric, entry in result["metrics"].items():
        for name, s in entry["adapters"].items():
            ci = ", ".join("n/a" if v is None else f"{v:+.4f}" for v in s["ci"])
            base = "n/a" if entry["base"] is None else f"{entry['base']:.4f}"
            value = "n/a" if s["value"] is None else f"{s['value']:.4f}"
            print(
                f"{metric:16s} {name}: {base} -> {value}  delta CI [{ci}]  "
                f"better/worse/same {s['better']}/{s['worse']}/{s['same']} of {s['n']}"
            )
    print(f"loraship eval: wrote {Path(args.out) / 'eval.json'} and samples/")
    return 0


def _adapter_name(folder: str) -> str:
    """An adapter name from a folder name: the characters ``--adapter NAME`` allows, at most 64."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]", "-", Path(folder).resolve().name).lstrip("._-")[:64]
    return name or "adapter"


def cmd_gate(args) -> int:
    """Pass or fail adapters: eval scores (and bench budgets) against a policy; exit 0 pass, 1 fail, 2 bad input."""
    from loraship.evaluation.gate import DEFAULT_POLICY, run_gate

    dirs = dict(_pair(a, "--adapter") for a in args.adapter)
    result = run_gate(args.eval, args.policy or DEFAULT_POLICY, args.out, bench_path=args.bench, adapter_dirs=dirs)
    for c in result.checks:
        if c.status != "pass":
            print(f"  {c.status.upper():4s} {c.adapter} {c.metric or '-'} {c.check}: {c.reason}")
    for name, info in result.adapters.items():
        print(f"loraship gate: {name}: {info['verdict'].upper()}")
    print(f"loraship gate: {result.verdict.upper()} (wrote {Path(args.out) / 'gate.json'}, gate.md, junit.xml)")
    return result.exit_code


def cmd_bench(args) -> int:
    """Load-test a served endpoint: latency, throughput and goodput per level and per adapter, with plots."""
    import signal

    if args.bench_command == "compare":
        from loraship.evaluation.bench.compare import compare_text, load

        print(compare_text(load(args.a), load(args.b), args.a_level, args.b_level))
        return 0

    from loraship.evaluation.bench.run import BenchConfig, exit_code, run_bench

    from .flags import as_command_line, from_args

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)  # like Ctrl-C: stop, keep what was measured, write it
    try:
        cfg = from_args(BenchConfig, args)
        cfg.command = as_command_line(["loraship", "bench"], BenchConfig, cfg)
        result = run_bench(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"loraship bench: wrote {cfg.out}/bench.json, summary.md, requests.jsonl, "
        f"{', '.join(result['files']['plots']) or 'no plots'}"
    )
    return exit_code(result)


def cmd_package(args) -> int:
    """Check a model dir and write the SageMaker model artifact (model.tar.gz) with a manifest of hashes."""
    import json

    from ..package import package_model_dir

    art = package_model_dir(
        args.model_dir,
        None if args.check else args.out,
        include_model=args.include_model,
        profile=args.profile,
        overwrite=args.overwrite,
    )
    summary = {
        "artifact": str(art.path) if art.path else None,
        "sha256": art.sha256 or None,
        "model_id": art.manifest["model_id"],
        "model_source": art.manifest["model_source"],
        "adapters": art.manifest["adapters"],
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_rollout(args) -> int:
    """Roll a gated artifact out to a SageMaker endpoint (create or blue/green update), smoke-test it,
    roll back on failure."""
    import json
    from pathlib import Path

    from ..rollout import RolloutOptions, parse_autoscale, rollout

    opts = RolloutOptions(
        artifact=Path(args.artifact),
        gate_report=Path(args.gate_report),
        bucket=args.bucket,
        endpoint_name=args.endpoint_name,
        instance_type=args.instance_type,
        role=args.role,
        region=args.region,
        instance_count=args.instance_count,
        autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
        target_invocations=args.target_invocations,
        image_uri=args.image_uri,
        prefix=args.prefix,
        endpoint_url=args.endpoint_url,
        timeout=args.timeout,
        poll=args.poll,
    )
    result = rollout(opts, dry_run=args.dry_run)
    print(json.dumps(result, indent=2))
    return 0


def cmd_perf(args) -> int:
    """Measure the handler's batching gain, mixed-adapter cost, DJL overhead and fp32 vs bf16."""
    from ..perf import print_figures, run_perf, run_threads

    if args.thread_sweep:
        policies = [p.strip() for p in args.thread_sweep.split(",") if p.strip()]
        bad = [p for p in policies if not re.fullmatch(r"[1-9]\d*(/passive)?", p)]
        if bad or not policies:
            return _usage(
                "perf", f"--thread-sweep takes N or N/passive, comma-separated; got {bad or args.thread_sweep!r}"
            )
        run_threads(
            args.model,
            tokens=args.tokens,
            concurrency=args.concurrency,
            policies=policies,
            server=_server_opts(args),
            out=args.out,
        )
        return 0
    print_figures(
        run_perf(args.model, tokens=args.tokens, concurrency=args.concurrency, out=args.out, server=_server_opts(args))
    )
    return 0


def cmd_demo(args) -> int:
    """Run the whole workflow on the embedded default model and print what each step proved."""
    from ..demo import run_demo

    return run_demo(port=args.port, questions=args.questions, server=_server_opts(args))


def _server_opts(args) -> dict:
    """The server choice of serve, perf and demo, checked before anything starts."""
    from ..runtime import resolve_server

    kind, home = resolve_server(args.server, args.djl_home)
    return {"kind": kind, "djl_home": home, "threads": args.threads}


def _add_server_args(p) -> None:
    p.add_argument(
        "--server",
        choices=("auto", "djl", "host"),
        default="auto",
        help="djl: the real DJL Serving ModelServer from --djl-home; host: loraship's host over DJL's "
        "Python engine (make runtime); auto (default): djl when a DJL home is configured",
    )
    p.add_argument(
        "--djl-home", metavar="DIR", help="a DJL Serving distribution folder (lib/, conf/); default $DJL_SERVING_HOME"
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads (OMP_NUM_THREADS) of the Python worker (default: $OMP_NUM_THREADS, else 1, "
        "DJL's policy; README, Threads)",
    )


def _pair(value: str, flag: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise UsageError(f"{flag} takes KEY=VALUE, got {value!r}")
    return key, val


def build_parser() -> argparse.ArgumentParser:
    from loraship.evaluation.bench.run import BenchConfig

    from .flags import add_flags

    parser = argparse.ArgumentParser(
        prog="loraship", description="Train, evaluate, serve and ship LoRA adapters on DJL Serving."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser("models", help="manage the embedded default model")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    p = msub.add_parser("prepare", help=cmd_models_prepare.__doc__)
    p.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    p.set_defaults(func=cmd_models_prepare)

    p = sub.add_parser("build", help=cmd_build.__doc__, description=cmd_build.__doc__)
    p.add_argument("--model", default="default", help="'default', a local HF folder, or a hub id")
    p.add_argument("--out", required=True, help="model dir to write")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a PEFT LoRA adapter folder to serve as NAME (repeatable; the first is also the seed's "
        "option.adapter_name)",
    )
    p.add_argument("--pipeline", default="instruction", help="pipeline name or module:Class")
    p.add_argument("--batch-size", type=int, default=1, help="DJL batch_size (requests per generate call)")
    p.add_argument("--max-batch-delay", type=int, default=100, help="DJL max_batch_delay in ms")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-new-tokens", type=int, default=512, help="cap on a request's max_new_tokens")
    p.add_argument("--predict-timeout", type=int, default=120, help="seconds before DJL restarts a stuck worker")
    p.add_argument(
        "--retry-threshold",
        type=int,
        default=10,
        help="worker crashes DJL Serving recovers from before it marks the model FAILED (DJL's own "
        "default, 0, fails the model on the first crash)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra option.KEY=VALUE line for serving.properties (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    p.add_argument("model_dir")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the model to load")
    _add_server_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    p.add_argument("--config", help="YAML config (default: training/configs/sagemaker_faqs.yaml)")
    p.add_argument(
        "--output",
        help="output folder (default: runs/<config name>; with --sagemaker --wait, where "
        "the job's adapter is extracted, default runs/sagemaker/<job name>)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.max_steps=10 (repeatable)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an unfinished run from its last checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in --output")
    sm = p.add_argument_group(
        "SageMaker",
        "with --sagemaker, the config (after --set) runs as a SageMaker "
        "training job; its inputs go to s3://BUCKET/loraship/train/JOB/",
    )
    sm.add_argument("--sagemaker", action="store_true", help="submit a SageMaker training job instead of training here")
    sm.add_argument("--instance-type", help="training instance (default: ml.g5.2xlarge)")
    sm.add_argument("--role", help="SageMaker execution role ARN (required with --sagemaker)")
    sm.add_argument(
        "--bucket", help="S3 bucket for the job's inputs, checkpoints and model artifact (required with --sagemaker)"
    )
    sm.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION / the AWS config)")
    sm.add_argument("--endpoint-url", help="send every AWS call here (default: AWS_ENDPOINT_URL, else AWS)")
    sm.add_argument("--job-name", help="training job name (default: loraship-<config name>-<UTC time>-<random>)")
    sm.add_argument(
        "--image-uri", help="training image (default: the SDK's PyTorch training DLC, GPU or CPU by instance type)"
    )
    sm.add_argument(
        "--spot", action="store_true", help="managed spot training; an interrupted job resumes from its checkpoints"
    )
    sm.add_argument(
        "--max-run",
        type=int,
        metavar="SECONDS",
        help="stop the job after this long (default: 86400; with --spot it may wait as long again)",
    )
    sm.add_argument(
        "--wait", action="store_true", help="wait for the job to end, then download and check the adapter into --output"
    )
    sm.add_argument(
        "--dry-run",
        action="store_true",
        help="check and print the uploads and the CreateTrainingJob request as JSON; touch nothing",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help=cmd_eval.__doc__, description=cmd_eval.__doc__)
    p.add_argument(
        "--model",
        help="'default', a local HF folder, or a hub id (default: the training run's base "
        "model with --split-from, else 'default')",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a PEFT LoRA adapter to score against the base (repeatable); with --endpoint, NAME is the "
        "served name and DIR is hashed (default with --split-from: the training output itself)",
    )
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="JSONL (instruction, response, optional context) or a question,answer CSV")
    data.add_argument(
        "--split-from", metavar="TRAINING_OUTPUT", help="score a training run's held-out split/test.jsonl"
    )
    p.add_argument("--out", required=True, help="folder for eval.json, docs.jsonl and samples/")
    p.add_argument("--limit", type=int, help="score only the first N documents")
    p.add_argument("--endpoint", metavar="URL", help="score a running server over HTTP (generation metrics only)")
    p.add_argument("--max-new-tokens", type=int, help="generation limit per answer (default: the task's, 128)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass in process")
    p.add_argument("--bootstrap", type=int, default=10_000, help="paired bootstrap resamples per delta")
    p.add_argument("--seed", type=int, default=0, help="seed of lm-eval's RNGs and of the bootstrap")
    p.add_argument("--device", help="torch device in process (default: cuda if present, else cpu)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("gate", help=cmd_gate.__doc__, description=cmd_gate.__doc__)
    p.add_argument("--eval", required=True, help="eval.json written by `loraship eval`")
    p.add_argument("--policy", help="policy YAML (default: evaluation/policies/default.yaml)")
    p.add_argument("--bench", help="bench.json of a `loraship bench` run, for the policy's performance budgets")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="where an adapter's files are now, if not at the path eval.json recorded (repeatable)",
    )
    p.add_argument("--out", required=True, help="folder for gate.json, gate.md and junit.xml")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser(
        "bench",
        help=cmd_bench.__doc__,
        description=cmd_bench.__doc__ + " Writes bench.json, "
        "requests.jsonl, summary.md and PNG plots into --out; `loraship bench compare A B` prints "
        "B/A ratios of two runs.",
    )
    add_flags(p, BenchConfig, require=False)  # `bench compare A B` needs neither --url nor --out
    p.set_defaults(func=cmd_bench)
    bsub = p.add_subparsers(dest="bench_command", metavar="ACTION")
    c = bsub.add_parser("compare", help="side-by-side B/A ratios of two runs' bench.json (or their folders)")
    c.add_argument("a", help="run A: bench.json or its folder (the baseline)")
    c.add_argument("b", help="run B: bench.json or its folder")
    c.add_argument("--a-level", help="compare only this level of A, e.g. 1 or concurrency=1")
    c.add_argument("--b-level", help="... against this level of B (default: the same as --a-level)")

    p = sub.add_parser("package", help=cmd_package.__doc__, description=cmd_package.__doc__)
    p.add_argument("model_dir", help="a model dir written by `loraship build`")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="archive to write, e.g. model.tar.gz")
    out.add_argument("--check", action="store_true", help="only check that the model dir would load; write nothing")
    p.add_argument(
        "--include-model",
        action="store_true",
        help="copy a local base model (option.model_id outside the model dir) into the archive as model/",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="properties merged over serving.properties in the archive, e.g. docker/serving.gpu.properties",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("rollout", help=cmd_rollout.__doc__, description=cmd_rollout.__doc__)
    p.add_argument("--artifact", required=True, help="model.tar.gz written by `loraship package`")
    p.add_argument("--gate-report", required=True, help="gate.json written by `loraship gate`; must pass")
    p.add_argument("--bucket", required=True, help="S3 bucket for the artifact")
    p.add_argument("--endpoint-name", required=True)
    p.add_argument("--instance-type", default="ml.g5.2xlarge")
    p.add_argument("--role", required=True, help="SageMaker execution role ARN")
    p.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION / the AWS config)")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument(
        "--autoscale", metavar="MIN:MAX", help="target-tracking autoscaling on SageMakerVariantInvocationsPerInstance"
    )
    p.add_argument(
        "--target-invocations",
        type=float,
        default=70.0,
        help="invocations per instance per minute that --autoscale aims at",
    )
    p.add_argument("--image-uri", help="container image (default: the pinned DJL LMI image for the region)")
    p.add_argument("--prefix", default="loraship", help="S3 key prefix")
    p.add_argument("--endpoint-url", help="send every AWS call here (default: AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the endpoint to settle")
    p.add_argument("--poll", type=float, default=30, help="seconds between status checks")
    p.add_argument("--dry-run", action="store_true", help="check and print the plan as JSON; touch nothing")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("perf", help=cmd_perf.__doc__, description=cmd_perf.__doc__)
    p.add_argument("--model", default="default", help="'default', a local HF folder, or a hub id")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per request (fixed with min_new_tokens)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent requests and batch_size")
    p.add_argument("--out", help="also write the figures as JSON here")
    p.add_argument(
        "--thread-sweep",
        metavar="POLICY,...",
        help="instead: batch-1 and batch-CONCURRENCY seconds for each worker thread policy, quiet and "
        "with one busy process; a policy is N (OMP_NUM_THREADS) or N/passive (OMP_WAIT_POLICY too)",
    )
    _add_server_args(p)
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    p.add_argument("--port", type=int, default=0, help="port for the demo server (default: a free one)")
    p.add_argument("--questions", type=int, default=3, help="how many FAQ questions to ask")
    _add_server_args(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except LorashipError as exc:
        print(f"loraship {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"loraship {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
