"""``loraship rollout``: a gated model artifact -> a SageMaker endpoint, all or nothing.

Order: check the artifact against its manifest and the gate report (``verdict`` pass, adapter
hashes equal to the adapters inside the archive); upload it to S3; create a Model (LMI image) and
an EndpointConfig; create the endpoint, or update an existing one to the new config (SageMaker's
default blue/green update); wait until InService; send one smoke request per adapter (and the
base model) through ``sagemaker-runtime``; then apply ``--autoscale``. Any failure after the
first AWS write undoes what this run did.

``plan`` decides what to do without AWS, ``execute`` does it, ``undo`` reverses it. boto3 finds
credentials and the region the usual way; ``endpoint_url`` (or ``AWS_ENDPOINT_URL``) points every
client elsewhere, e.g. at a moto server in the tests.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from ..core.aws import client_error
from .execute import Run
from .plan import (
    LMI_ACCOUNT,
    LMI_REGIONS,
    LMI_TAG,
    LMI_VERSION,
    Plan,
    RolloutError,
    RolloutFailed,
    RolloutOptions,
    RolloutRefused,
    check_gate,
    lmi_image_uri,
    make_plan,
    parse_autoscale,
    smoke_requests,
)
from .undo import roll_back

__all__ = [
    "LMI_ACCOUNT",
    "LMI_REGIONS",
    "LMI_TAG",
    "LMI_VERSION",
    "Plan",
    "RolloutError",
    "RolloutFailed",
    "RolloutOptions",
    "RolloutRefused",
    "check_gate",
    "lmi_image_uri",
    "make_plan",
    "parse_autoscale",
    "rollout",
    "smoke_requests",
]


def rollout(opts: RolloutOptions, *, dry_run: bool = False, log=None) -> dict:
    """Check, then (unless ``dry_run``) deploy; return the plan (dry run) or what was done."""
    log = log or (lambda msg: print(f"loraship rollout: {msg}", file=sys.stderr, flush=True))
    plan, _ = make_plan(opts)
    if dry_run:
        return {"dry_run": True, "plan": asdict(plan)}
    from botocore.exceptions import BotoCoreError, ClientError

    run = Run(plan, opts, log)
    try:
        run.check()
    except (ClientError, BotoCoreError) as exc:  # credentials, permissions, network: nothing touched yet
        raise RolloutRefused(f"cannot reach AWS: {client_error(exc)}") from None
    try:
        run.upload()
        run.create_model()
        action = run.deploy()
        smoke = run.smoke()
        scaling = run.autoscale()
    except BaseException as exc:
        left = roll_back(run)
        what = (
            f"endpoint {plan.endpoint_name} is back on {run.previous['EndpointConfigName']}"
            if run.previous
            else f"endpoint {plan.endpoint_name}, created by this run, was deleted"
        )
        msg = f"rollout failed: {exc if isinstance(exc, RolloutError) else client_error(exc)}; rolled back: {what}"
        if left:
            msg += "; NOT UNDONE (clean up by hand): " + "; ".join(left)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            log(msg)
            raise
        raise RolloutFailed(msg) from exc
    return {
        "dry_run": False,
        "action": action,
        "endpoint_name": plan.endpoint_name,
        "endpoint_config_name": plan.endpoint_config_name,
        "model_name": plan.model_name,
        "previous_endpoint_config_name": run.previous and run.previous["EndpointConfigName"],
        "s3_uri": plan.s3_uri,
        "image_uri": plan.image_uri,
        "artifact_sha256": plan.artifact_sha256,
        "adapters": plan.adapters,
        "smoke": smoke,
        "autoscale": scaling,
    }
