"""A planned rollout done against AWS: the upload, the Model and EndpointConfig, the endpoint
created or updated, waiting until it is InService, the smoke requests, then autoscaling.

Every write is recorded in ``Run.undo`` before it is made, for ``undo.roll_back``.
"""

from __future__ import annotations

import json
import time

from ..core.aws import client_error, clients
from .plan import Plan, RolloutFailed, RolloutOptions, RolloutRefused

VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed", "Deleting")


class Run:
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

    # -- the endpoint's state

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

    def settle(self) -> None:
        """Until the endpoint is gone or no longer busy, whatever state it ends in."""
        deadline = time.monotonic() + self.opts.timeout
        while (ep := self.describe_endpoint()) and ep["EndpointStatus"] in _BUSY:
            if time.monotonic() > deadline:
                raise RolloutFailed(f"endpoint {self.plan.endpoint_name} still {ep['EndpointStatus']}")
            time.sleep(self.opts.poll)

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

    def scaling_of(self, rid: str) -> dict | None:
        """The registered target of a variant and its policies, or None."""
        targets = self.scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])
        if not targets["ScalableTargets"]:
            return None
        policies = self.scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)
        return {"target": targets["ScalableTargets"][0], "policies": policies["ScalingPolicies"]}

    def register_scaling(self, rid: str, lo: int, hi: int, policies: list[dict]) -> None:
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

    def deregister_scaling(self, rid: str) -> None:
        self.scaling.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION
        )

    def suspend_scaling(self) -> None:
        """SageMaker refuses to update an endpoint when a scaled variant changes instance type or goes
        away: deregister those targets first (restored on rollback, or re-applied after the update)."""
        old = self.sm.describe_endpoint_config(EndpointConfigName=self.previous["EndpointConfigName"])
        for variant in old["ProductionVariants"]:
            if variant["VariantName"] == VARIANT and variant.get("InstanceType") == self.plan.instance_type:
                continue
            rid = self._resource_id(variant["VariantName"])
            saved = self.scaling_of(rid)
            if saved:
                self.log(f"suspending autoscaling of {rid} for the update")
                self.undo.append(("scaling", rid, saved))
                self.suspended.append(saved)
                self.deregister_scaling(rid)

    def autoscale(self) -> dict | None:
        """Apply --autoscale; without it, re-apply the scaling suspended for the update."""
        rid = self._resource_id(VARIANT)
        a = self.plan.autoscale
        if not a and not self.suspended:
            return None
        self.undo.append(("scaling", rid, self.scaling_of(rid)))
        if a:
            self.log(f"autoscaling {rid}: {a['min']}..{a['max']} instances, {a['target']} invocations/instance")
            self.register_scaling(
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
        self.register_scaling(rid, t["MinCapacity"], t["MaxCapacity"], self.suspended[0]["policies"])
        return {"resource_id": rid, "min": t["MinCapacity"], "max": t["MaxCapacity"], "restored": True}
