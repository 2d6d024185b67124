"""``loraship <command>``: one table maps command names to functions; their docstrings are the help."""

from __future__ import annotations

import argparse
import sys


def cmd_models_prepare(args) -> int:
    """Convert the embedded default model (SmolLM2-135M-Instruct GGUF) to an HF folder; print its path."""
    from .models import prepare_default

    print(prepare_default(force=args.force))
    return 0


def cmd_build(args) -> int:
    """Write a DJL Serving model dir: serving.properties, model.py, the handler, adapters."""
    from .build import build_model_dir, parse_adapter_args

    options = dict(_pair(o, "--option") for o in args.option)
    out = build_model_dir(args.model, args.out, parse_adapter_args(args.adapter), pipeline=args.pipeline,
                          batch_size=args.batch_size, max_batch_delay=args.max_batch_delay, dtype=args.dtype,
                          max_new_tokens=args.max_new_tokens, predict_timeout=args.predict_timeout,
                          options=options, overwrite=args.overwrite)
    print(out)
    return 0


def cmd_serve(args) -> int:
    """Run DJL Serving on a model dir until it stops or Ctrl-C; print the URL once /ping answers."""
    from .runtime import Server

    server = Server(args.model_dir, host=args.host, port=args.port)
    try:
        took = server.wait_ready(timeout=args.timeout)
        print(f"loraship: serving {args.model_dir} at {server.url} (ready in {took:.1f}s)", flush=True)
        return server.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def cmd_demo(args) -> int:
    """Run the whole workflow on the embedded default model and print what each step proved."""
    from .demo import run_demo

    return run_demo(port=args.port, questions=args.questions)


def _pair(value: str, flag: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise SystemExit(f"{flag} takes KEY=VALUE, got {value!r}")
    return key, val


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraship", description="Train, evaluate, serve and ship LoRA adapters on DJL Serving.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser("models", help="manage the embedded default model")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    p = msub.add_parser("prepare", help=cmd_models_prepare.__doc__)
    p.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    p.set_defaults(func=cmd_models_prepare)

    p = sub.add_parser("build", help=cmd_build.__doc__, description=cmd_build.__doc__)
    p.add_argument("--model", default="default", help="'default', a local HF folder, or a hub id")
    p.add_argument("--out", required=True, help="model dir to write")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="a PEFT LoRA adapter folder to serve as NAME (repeatable; the first is also the seed's "
                        "option.adapter_name)")
    p.add_argument("--pipeline", default="instruction", help="pipeline name or module:Class")
    p.add_argument("--batch-size", type=int, default=1, help="DJL batch_size (requests per generate call)")
    p.add_argument("--max-batch-delay", type=int, default=100, help="DJL max_batch_delay in ms")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-new-tokens", type=int, default=512, help="cap on a request's max_new_tokens")
    p.add_argument("--predict-timeout", type=int, default=120, help="seconds before DJL restarts a stuck worker")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra option.KEY=VALUE line for serving.properties (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    p.add_argument("model_dir")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the model to load")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    p.add_argument("--port", type=int, default=0, help="port for the demo server (default: a free one)")
    p.add_argument("--questions", type=int, default=3, help="how many FAQ questions to ask")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .build import BuildError
    from .models import ModelError
    from .runtime import RuntimeMissing

    try:
        return args.func(args)
    except (BuildError, ModelError, RuntimeMissing) as exc:
        print(f"loraship {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
