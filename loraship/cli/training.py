"""``loraship train``: here, or as a SageMaker training job."""

from __future__ import annotations

import json
from typing import Annotated

from ..core.errors import UsageError
from ..handler.settings import Flag
from ..training.sagemaker import SM, JobOptions
from .flags import Command, flag_name

LOCAL = "local runs"


class TrainOptions(JobOptions):
    resume: Annotated[bool, Flag(group=LOCAL)] = False
    """continue an unfinished run from its last checkpoint"""
    overwrite: Annotated[bool, Flag(group=LOCAL)] = False
    """replace a finished or unfinished run in --output"""


def _given(opts: TrainOptions, group: str) -> list[str]:
    """The flags of ``group`` set to something other than their default."""
    return [
        flag_name(TrainOptions, name)
        for name, field in TrainOptions.model_fields.items()
        if any(getattr(m, "group", None) == group for m in field.metadata)
        and name != "sagemaker"
        and getattr(opts, name) != field.get_default(call_default_factory=True)
    ]


def train(opts: TrainOptions) -> int:
    """Train a LoRA adapter from a YAML config (training/configs/); resumable, servable by build.
    With --sagemaker, run the same config as a SageMaker training job."""
    if not opts.sagemaker:
        if _given(opts, SM):
            raise UsageError(f"{', '.join(_given(opts, SM))}: only with --sagemaker")
        from ..training.recipe import run_cli

        return run_cli(opts.config, opts.output, opts.overrides, resume=opts.resume, overwrite=opts.overwrite)
    if _given(opts, LOCAL):
        raise UsageError(
            "--resume and --overwrite are for local runs: a SageMaker job resumes from its own checkpoints"
        )
    if opts.output and not opts.wait:
        raise UsageError("--output with --sagemaker is where --wait puts the adapter: add --wait")
    from ..training.sagemaker import run_job

    job = JobOptions.model_validate(opts.model_dump(include=set(JobOptions.model_fields)))
    print(json.dumps(run_job(job, dry_run=job.dry_run), indent=2))  # on Ctrl-C it says what was left behind
    return 0


COMMANDS = [Command("train", train, TrainOptions)]
