"""``loraship rollout``: a gated model artifact -> a SageMaker endpoint, all or nothing.

Order: check the artifact against its manifest and the gate report (``verdict`` pass, adapter
hashes equal to the adapters inside the archive); upload it to S3; create a Model (LMI image) and
an EndpointConfig; create the endpoint, or update an existing one to the new config (SageMaker's
default blue/green update); wait until InService; send one smoke request per adapter (and the
base model) through ``sagemaker-runtime``; then apply ``--autoscale``. Any failure after the
first AWS write undoes what this run did: the endpoint goes back to its previous config (or is
deleted if this run created it), and the new Model, EndpointConfig and uploaded object are deleted.

The gate report (``gate.json``, written by ``loraship gate``)::

    {"verdict": "pass" | "fail", "checks": [...],
     "adapters": {"<name>": {"sha256": "<loraship.package.adapter_sha256 of the adapter folder>"}},
     "policy_sha256": "...", "eval_sha256": "..."}

boto3 finds credentials and the region the usual way; ``endpoint_url`` (or ``AWS_ENDPOINT_URL``)
points every client elsewhere, e.g. at a moto server in the tests.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.aws import RESOURCE_NAME, ROLE_ARN, client_error, clients, default_region
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
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SMOKE_PROMPT = "What is Amazon SageMaker?"
_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed", "Deleting")


class RolloutError(Exception):
    pass


class RolloutRefused(RolloutError):
    """Nothing was touched: the inputs or the gate do not allow this rollout."""


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


@dataclass
class RolloutOptions:
    artifact: Path
    gate_report: Path
    bucket: str
    endpoint_name: str
    instance_type: str
    role: str
    region: str | None = None
    instance_count: int = 1
    autoscale: tuple[int, int] | None = None
    """(min, max) instances for a target-tracking policy on invocations per instance."""
    target_invocations: float = 70.0
    """SageMakerVariantInvocationsPerInstance target (requests per instance per minute)."""
    image_uri: str | None = None
    prefix: str = "loraship"
    endpoint_url: str | None = None
    timeout: float = 3600.0
    poll: float = 30.0
    startup_timeout: int = 900
    """ContainerStartupHealthCheckTimeoutInSeconds: time the container may take to answer /ping."""


def parse_autoscale(value: str) -> tuple[int, int]:
    lo, sep, hi = value.partition(":")
    try:
        bounds = int(lo), int(hi)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 1 <= bounds[0] <= bounds[1]:
        raise RolloutRefused(f"--autoscale takes MIN:MAX with 1 <= MIN <= MAX, got {value!r}")
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


# -- doing it --------------------------------------------------------------------------------------


class _Rollout:
    """One rollout's AWS calls; ``undo`` lists what this run created, newest last."""

    def __init__(self, plan: Plan, opts: RolloutOptions, log):
        self.s3, self.sm, self.runtime, self.scaling = clients(
            plan.region, opts.endpoint_url, "s3", "sagemaker", "sagemaker-runtime", "application-autoscaling"
        )
        self.plan, self.opts, self.log = plan, opts, log
        self.bucket, _, self.key = plan.s3_uri[len("s3://") :].partition("/")
        self.undo: list[tuple[str, str, dict | None]] = []
        self.previous: dict | None = None
        self.suspended: list[dict] = []

    # -- helpers

    def describe_endpoint(self) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.sm.describe_endpoint(EndpointName=self.plan.endpoint_name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ValidationException" and "Could not find" in str(exc):
                return None
            raise

    def wait(self, config_name: str | None) -> dict:
        """Until the endpoint settles; then it must be InService on ``config_name`` (None: gone)."""
        deadline = time.monotonic() + self.opts.timeout
        while True:
            ep = self.describe_endpoint()
            status = ep and ep["EndpointStatus"]
            if ep is None and config_name is None:
                return {}
            if status not in _BUSY:
                break
            if time.monotonic() > deadline:
                raise RolloutFailed(f"endpoint {self.plan.endpoint_name} still {status} after {self.opts.timeout:.0f}s")
            time.sleep(self.opts.poll)
        if ep is None:
            raise RolloutFailed(f"endpoint {self.plan.endpoint_name} disappeared")
        if status != "InService" or ep["EndpointConfigName"] != config_name:
            reason = ep.get("FailureReason") or "no reason given"
            raise RolloutFailed(
                f"endpoint {self.plan.endpoint_name} is {status} on "
                f"{ep['EndpointConfigName']}, not InService on {config_name}: {reason}"
            )
        return ep

    # -- steps
    def check(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise RolloutRefused(f"bucket {self.bucket} is not reachable: {client_error(exc)}") from None
        self.previous = self.describe_endpoint()
        status = self.previous and self.previous["EndpointStatus"]
        if status == "Failed":
            raise RolloutRefused(
                f"endpoint {self.plan.endpoint_name} is Failed "
                f"({self.previous.get('FailureReason', 'no reason given')}): delete it first"
            )
        if status and status != "InService":
            raise RolloutRefused(
                f"endpoint {self.plan.endpoint_name} is {status}: "
                "wait until it is InService (another rollout may be running)"
            )

    def upload(self) -> None:
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self.key)
            if head.get("Metadata", {}).get("sha256") == self.plan.artifact_sha256:
                self.log(f"artifact already in {self.plan.s3_uri}")
                return
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                raise
        self.log(f"uploading {self.plan.artifact} to {self.plan.s3_uri}")
        self.undo.append(("s3", self.key, None))
        self.s3.upload_file(
            self.plan.artifact,
            self.bucket,
            self.key,
            ExtraArgs={"Metadata": {"sha256": self.plan.artifact_sha256}, "ContentType": "application/gzip"},
        )

    def create_model(self) -> None:
        tags = [{"Key": "loraship:artifact-sha256", "Value": self.plan.artifact_sha256}]
        self.undo.append(("model", self.plan.model_name, None))
        self.sm.create_model(
            ModelName=self.plan.model_name,
            ExecutionRoleArn=self.opts.role,
            Tags=tags,
            PrimaryContainer={"Image": self.plan.image_uri, "ModelDataUrl": self.plan.s3_uri},
        )
        self.undo.append(("endpoint_config", self.plan.endpoint_config_name, None))
        self.sm.create_endpoint_config(
            EndpointConfigName=self.plan.endpoint_config_name,
            Tags=tags,
            ProductionVariants=[
                {
                    "VariantName": VARIANT,
                    "ModelName": self.plan.model_name,
                    "InstanceType": self.plan.instance_type,
                    "InitialInstanceCount": self.plan.instance_count,
                    "InitialVariantWeight": 1.0,
                    "ContainerStartupHealthCheckTimeoutInSeconds": self.opts.startup_timeout,
                }
            ],
        )

    def deploy(self) -> str:
        name, config = self.plan.endpoint_name, self.plan.endpoint_config_name
        if self.previous is None:
            self.log(f"creating endpoint {name} on {config}")
            self.undo.append(("endpoint", name, None))
            self.sm.create_endpoint(EndpointName=name, EndpointConfigName=config)
            action = "created"
        else:
            self.suspend_scaling()
            self.log(f"updating endpoint {name}: {self.previous['EndpointConfigName']} -> {config}")
            self.undo.append(("endpoint_update", self.previous["EndpointConfigName"], None))
            self.sm.update_endpoint(EndpointName=name, EndpointConfigName=config)
            action = "updated"
        self.wait(config)
        return action

    def smoke(self) -> list[dict]:
        """Each smoke request must answer JSON with a string ``generated_text``."""
        from botocore.exceptions import BotoCoreError, ClientError

        results = []
        for i, body in enumerate(self.plan.smoke_requests):
            target = body.get("adapters", "base model")
            try:
                reply = self.runtime.invoke_endpoint(
                    EndpointName=self.plan.endpoint_name,
                    ContentType="application/json",
                    Accept="application/json",
                    Body=json.dumps(body).encode(),
                    # Unique per rollout and request: traceable in the endpoint's logs.
                    InferenceId=f"smoke{i}-{self.plan.endpoint_config_name}"[:64],
                )
                raw = reply["Body"].read()
            except (ClientError, BotoCoreError) as exc:  # an error status or no answer fails the smoke check
                raise RolloutFailed(f"smoke request for {target} failed: {client_error(exc)}") from exc
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            if not isinstance(answer, dict) or not isinstance(answer.get("generated_text"), str):
                raise RolloutFailed(f'smoke request for {target} got {raw[:200]!r}, not {{"generated_text": "..."}}')
            results.append({"target": target, "generated_text": answer["generated_text"][:200]})
        return results

    # -- autoscaling
    def _resource_id(self, variant: str) -> str:
        return f"endpoint/{self.plan.endpoint_name}/variant/{variant}"

    def _scaling_of(self, rid: str) -> dict | None:
        """The registered target of a variant and its policies, or None."""
        targets = self.scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])
        if not targets["ScalableTargets"]:
            return None
        policies = self.scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)
        return {"target": targets["ScalableTargets"][0], "policies": policies["ScalingPolicies"]}

    def _register(self, rid: str, lo: int, hi: int, policies: list[dict]) -> None:
        self.scaling.register_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=rid,
            ScalableDimension=SCALABLE_DIMENSION,
            MinCapacity=lo,
            MaxCapacity=hi,
        )
        for pol in policies:
            self.scaling.put_scaling_policy(
                PolicyName=pol["PolicyName"],
                ServiceNamespace="sagemaker",
                ResourceId=rid,
                ScalableDimension=SCALABLE_DIMENSION,
                PolicyType=pol["PolicyType"],
                TargetTrackingScalingPolicyConfiguration=pol["TargetTrackingScalingPolicyConfiguration"],
            )

    def _restore_scaling(self, rid: str, saved: dict | None) -> None:
        if self._scaling_of(rid):
            self.scaling.deregister_scalable_target(
                ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION
            )
        if saved:
            t = saved["target"]
            self._register(rid, t["MinCapacity"], t["MaxCapacity"], saved["policies"])

    def suspend_scaling(self) -> None:
        """SageMaker refuses to update an endpoint when a scaled variant changes instance type or goes
        away: deregister those targets first (restored on rollback, or re-applied after the update)."""
        old = self.sm.describe_endpoint_config(EndpointConfigName=self.previous["EndpointConfigName"])
        for variant in old["ProductionVariants"]:
            if variant["VariantName"] == VARIANT and variant.get("InstanceType") == self.plan.instance_type:
                continue
            rid = self._resource_id(variant["VariantName"])
            saved = self._scaling_of(rid)
            if saved:
                self.log(f"suspending autoscaling of {rid} for the update")
                self.undo.append(("scaling", rid, saved))
                self.suspended.append(saved)
                self.scaling.deregister_scalable_target(
                    ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION
                )

    def autoscale(self) -> dict | None:
        """Apply --autoscale; without it, re-apply the scaling suspended for the update."""
        rid = self._resource_id(VARIANT)
        a = self.plan.autoscale
        if not a and not self.suspended:
            return None
        self.undo.append(("scaling", rid, self._scaling_of(rid)))
        if a:
            self.log(f"autoscaling {rid}: {a['min']}..{a['max']} instances, {a['target']} invocations/instance")
            self._register(
                rid,
                a["min"],
                a["max"],
                [
                    {
                        "PolicyName": f"{self.plan.endpoint_name}-invocations",
                        "PolicyType": "TargetTrackingScaling",
                        "TargetTrackingScalingPolicyConfiguration": {
                            "TargetValue": float(a["target"]),
                            "PredefinedMetricSpecification": {"PredefinedMetricType": a["metric"]},
                            "ScaleInCooldown": 300,
                            "ScaleOutCooldown": 60,
                        },
                    }
                ],
            )
            return {"resource_id": rid, **a}
        t = self.suspended[0]["target"]
        self._register(rid, t["MinCapacity"], t["MaxCapacity"], self.suspended[0]["policies"])
        return {"resource_id": rid, "min": t["MinCapacity"], "max": t["MaxCapacity"], "restored": True}

    # -- undo
    def roll_back(self) -> list[str]:
        """Undo this run's writes, newest first; return what could not be undone."""
        left = []
        for kind, name, saved in reversed(self.undo):
            try:
                if kind == "endpoint_update":
                    self.log(f"rolling endpoint {self.plan.endpoint_name} back to {name}")
                    self._settle()
                    ep = self.describe_endpoint()
                    if ep and ep["EndpointConfigName"] != name:
                        self.sm.update_endpoint(EndpointName=self.plan.endpoint_name, EndpointConfigName=name)
                    self.wait(name)
                elif kind == "endpoint":
                    self.log(f"deleting endpoint {name} (this rollout created it)")
                    self._settle()
                    if self.describe_endpoint() is not None:
                        self.sm.delete_endpoint(EndpointName=name)
                    self.wait(None)
                elif kind == "endpoint_config":
                    self.sm.delete_endpoint_config(EndpointConfigName=name)
                elif kind == "model":
                    self.sm.delete_model(ModelName=name)
                elif kind == "s3":
                    self.s3.delete_object(Bucket=self.bucket, Key=name)
                elif kind == "scaling":
                    self._restore_scaling(name, saved)
            except Exception as exc:  # keep undoing the rest; report every leftover
                left.append(f"{kind} {name}: {client_error(exc)}")
        self.undo.clear()
        return left

    def _settle(self) -> None:
        deadline = time.monotonic() + self.opts.timeout
        while (ep := self.describe_endpoint()) and ep["EndpointStatus"] in _BUSY:
            if time.monotonic() > deadline:
                raise RolloutFailed(f"endpoint {self.plan.endpoint_name} still {ep['EndpointStatus']}")
            time.sleep(self.opts.poll)


def rollout(opts: RolloutOptions, *, dry_run: bool = False, log=None) -> dict:
    """Check, then (unless ``dry_run``) deploy; return the plan (dry run) or what was done."""
    log = log or (lambda msg: print(f"loraship rollout: {msg}", file=sys.stderr, flush=True))
    plan, _ = make_plan(opts)
    if dry_run:
        return {"dry_run": True, "plan": asdict(plan)}
    from botocore.exceptions import BotoCoreError, ClientError

    run = _Rollout(plan, opts, log)
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
        left = run.roll_back()
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
