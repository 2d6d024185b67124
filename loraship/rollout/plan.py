"""What a rollout will do, decided before any AWS call: the inputs checked, the artifact checked
against the gate report, and the names, image and requests it will use.

The gate report (``gate.json``, written by ``loraship gate``)::

    {"verdict": "pass" | "fail", "checks": [...],
     "adapters": {"<name>": {"sha256": "<loraship.package.adapter_sha256 of the adapter folder>"}},
     "policy_sha256": "...", "eval_sha256": "..."}
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import field_validator

from ..core.aws import RESOURCE_NAME, ROLE_ARN, default_region
from ..core.errors import EXIT_BAD_INPUT, Failed
from ..handler.settings import Flag, Settings
from ..package import ArchiveContents, PackageError, read_archive

#: The LMI line the container (docker/Dockerfile) and the SageMaker Model both use.
LMI_VERSION = "0.36.0"
LMI_TAG = "0.36.0-lmi27.0.0-cu130"
#: Used when no SageMaker SDK is installed: the Deep Learning Containers registry of the regions
#: that share account 763104351884 (the SDK's djl-lmi.json lists the others).
LMI_ACCOUNT = "763104351884"
LMI_REGIONS = (
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "eu-central-1",
    "eu-north-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
)
LMI_IMAGE_PATTERN = "{account}.dkr.ecr.{region}.amazonaws.com/djl-inference:{tag}"
SMOKE_PROMPT = "What is Amazon SageMaker?"


# The package's errors live here, in the module the others import.
class RolloutError(Failed):
    """The rollout failed (exit 1)."""


class RolloutRefused(RolloutError):
    """Nothing was touched: the inputs or the gate do not allow this rollout (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class RolloutFailed(RolloutError):
    """Something failed after AWS was touched; the message says what was undone."""


def lmi_image_uri(region: str, version: str = LMI_VERSION) -> tuple[str, str]:
    """(image URI, where it came from): the SageMaker SDK's djl-lmi lookup, else the pinned pattern."""
    try:
        try:
            from sagemaker.core import image_uris  # SDK v3 (sagemaker-core)
        except ImportError:
            from sagemaker import image_uris  # SDK v2
        return image_uris.retrieve("djl-lmi", region=region, version=version), "sagemaker SDK image_uris"
    except ImportError:
        pass
    except ValueError as exc:  # a region or version the SDK does not know
        raise RolloutRefused(
            f"the SageMaker SDK has no LMI {version} image for {region} ({exc}): pass --image-uri"
        ) from None
    if version != LMI_VERSION or region not in LMI_REGIONS:
        raise RolloutRefused(
            f"no LMI image URI known for {region} without the SageMaker SDK: "
            "pip install sagemaker-core, or pass --image-uri"
        )
    return LMI_IMAGE_PATTERN.format(account=LMI_ACCOUNT, region=region, tag=LMI_TAG), "pinned pattern"


class RolloutOptions(Settings):
    """A rollout; the fields are ``loraship rollout``'s flags, the docstrings their help."""

    artifact: Path
    """model.tar.gz written by `loraship package`"""
    gate_report: Path
    """gate.json written by `loraship gate`; must pass"""
    bucket: str
    """S3 bucket for the artifact"""
    endpoint_name: str
    """the SageMaker endpoint to create or update"""
    instance_type: str = "ml.g5.2xlarge"
    """instance type of the endpoint"""
    role: str
    """SageMaker execution role ARN"""
    region: str | None = None
    """AWS region (default: AWS_DEFAULT_REGION / the AWS config)"""
    instance_count: int = 1
    """instances behind the endpoint"""
    autoscale: Annotated[tuple[int, int] | None, Flag(metavar="MIN:MAX")] = None
    """target-tracking autoscaling on SageMakerVariantInvocationsPerInstance, MIN:MAX instances"""
    target_invocations: float = 70.0
    """invocations per instance per minute that --autoscale aims at"""
    image_uri: str | None = None
    """container image (default: the pinned DJL LMI image for the region)"""
    prefix: str = "loraship"
    """S3 key prefix"""
    endpoint_url: str | None = None
    """send every AWS call here (default: AWS_ENDPOINT_URL, else AWS)"""
    timeout: float = 3600.0
    """seconds to wait for the endpoint to settle"""
    poll: float = 30.0
    """seconds between status checks"""
    dry_run: bool = False
    """check and print the plan as JSON; touch nothing"""
    startup_timeout: Annotated[int, Flag(hidden=True)] = 900
    """ContainerStartupHealthCheckTimeoutInSeconds: time the container may take to answer /ping."""

    @field_validator("autoscale", mode="before")
    @classmethod
    def _autoscale(cls, value):
        return parse_autoscale(value) if isinstance(value, str) else value


def parse_autoscale(value: str) -> tuple[int, int]:
    lo, sep, hi = value.partition(":")
    try:
        bounds = int(lo), int(hi)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 1 <= bounds[0] <= bounds[1]:
        raise ValueError(f"takes MIN:MAX with 1 <= MIN <= MAX, got {value!r}")
    return bounds


# -- the gate --------------------------------------------------------------------------------------


def check_gate(report_path: str | Path, contents: ArchiveContents) -> dict:
    """Refuse unless the gate passed and every adapter inside the artifact is one it gated, byte for byte.

    A gated adapter the artifact does not ship is fine (the gate passes only if every adapter does).
    The gate reads its own report (``evaluation.gate.load_report``).
    """
    from loraship.evaluation.gate import GateInputError, failed_checks, load_report

    try:
        report = load_report(report_path)
    except GateInputError as exc:
        raise RolloutRefused(f"gate report unusable: {exc}") from None
    if report["verdict"] != "pass":
        failed = failed_checks(report)
        detail = f" (failed checks: {', '.join(failed)})" if failed else ""
        raise RolloutRefused(f"gate verdict is {report['verdict']!r}, not 'pass'{detail}: nothing to roll out")
    gated = report["adapters"]
    problems = []
    for name, sha in contents.adapters.items():
        entry = gated.get(name)
        if entry is None:
            problems.append(f"adapter {name!r} is in the artifact but was not gated")
        elif entry.get("verdict", "pass") != "pass":
            problems.append(f"adapter {name!r} did not pass the gate")
        elif entry.get("sha256") != sha:
            problems.append(
                f"adapter {name!r} in the artifact (sha256 {sha[:12]}...) is not the one gated "
                f"({str(entry.get('sha256'))[:12]}...): its files changed after gating"
            )
    if problems:
        raise RolloutRefused(
            "the artifact does not match the gate report: " + "; ".join(problems) + ". Gate the adapters the "
            "model dir ships (adapters/NAME, hashed by loraship.package.adapter_sha256), then package again"
        )
    return report


# -- the plan --------------------------------------------------------------------------------------


@dataclass
class Plan:
    endpoint_name: str
    region: str
    artifact: str
    artifact_sha256: str
    adapters: dict[str, str]
    s3_uri: str
    image_uri: str
    image_source: str
    model_name: str
    endpoint_config_name: str
    instance_type: str
    instance_count: int
    autoscale: dict | None
    smoke_requests: list[dict]
    gate: dict = field(default_factory=dict)
    action: str = "create the endpoint, or update it to the new config if it exists"


def _resource_name(endpoint: str, sha: str) -> str:
    """A fresh name per rollout (Models and EndpointConfigs are immutable): endpoint-sha8-time-rand."""
    suffix = f"-{sha[:8]}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    return endpoint[: 63 - len(suffix)].rstrip("-") + suffix


def smoke_requests(adapters) -> list[dict]:
    """One short greedy request for the base model and one per adapter (the body's ``adapters`` field)."""
    base = {"inputs": SMOKE_PROMPT, "parameters": {"max_new_tokens": 8}}
    return [base] + [{**base, "adapters": name} for name in sorted(adapters)]


def make_plan(opts: RolloutOptions) -> tuple[Plan, ArchiveContents]:
    """Check every input and the gate (no AWS call); raise RolloutRefused listing the problems."""
    problems = []
    if not RESOURCE_NAME.match(opts.endpoint_name):
        problems.append(f"--endpoint-name {opts.endpoint_name!r}: 1-63 letters, digits and '-'")
    if not opts.bucket or "/" in opts.bucket:
        problems.append(f"--bucket {opts.bucket!r} must be a bucket name (no s3:// or key)")
    if not ROLE_ARN.match(opts.role or ""):
        problems.append(f"--role {opts.role!r} must be an IAM role ARN (arn:aws:iam::123456789012:role/NAME)")
    if not opts.instance_type.startswith("ml."):
        problems.append(f"--instance-type {opts.instance_type!r} must be a SageMaker type such as ml.g5.2xlarge")
    if opts.instance_count < 1:
        problems.append("--instance-count must be >= 1")
    if opts.autoscale and not opts.autoscale[0] <= opts.instance_count <= opts.autoscale[1]:
        problems.append(
            f"--instance-count {opts.instance_count} is outside --autoscale {opts.autoscale[0]}:{opts.autoscale[1]}"
        )
    region = opts.region or default_region()
    if not region:
        problems.append("no region: pass --region or set AWS_DEFAULT_REGION")
    if problems:
        raise RolloutRefused("; ".join(problems))
    try:
        contents = read_archive(opts.artifact)
    except PackageError as exc:
        raise RolloutRefused(str(exc)) from None
    report = check_gate(opts.gate_report, contents)
    if opts.image_uri:
        image, source = opts.image_uri, "--image-uri"
    else:
        image, source = lmi_image_uri(region)
    name = _resource_name(opts.endpoint_name, contents.sha256)
    key = f"{opts.prefix.strip('/')}/{opts.endpoint_name}/{contents.sha256}/model.tar.gz"
    autoscale = None
    if opts.autoscale:
        autoscale = {
            "min": opts.autoscale[0],
            "max": opts.autoscale[1],
            "metric": "SageMakerVariantInvocationsPerInstance",
            "target": opts.target_invocations,
        }
    plan = Plan(
        endpoint_name=opts.endpoint_name,
        region=region,
        artifact=str(opts.artifact),
        artifact_sha256=contents.sha256,
        adapters=contents.adapters,
        s3_uri=f"s3://{opts.bucket}/{key}",
        image_uri=image,
        image_source=source,
        model_name=name,
        endpoint_config_name=name,
        instance_type=opts.instance_type,
        instance_count=opts.instance_count,
        autoscale=autoscale,
        smoke_requests=smoke_requests(contents.adapters),
        gate={
            **{k: report.get(k) for k in ("verdict", "policy_sha256", "eval_sha256")},
            "gated_not_shipped": sorted(set(report.get("adapters") or {}) - set(contents.adapters)),
        },
    )
    return plan, contents
