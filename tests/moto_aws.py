"""A moto server on 127.0.0.1 for tests that make real boto3 calls over HTTP, the environment
that keeps those calls away from real AWS (dummy credentials, no AWS config files), and the
patches of moto's internals that stand in for what moto lacks (each names the moto it was written for)."""

from __future__ import annotations

import contextlib

import requests

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


@contextlib.contextmanager
def moto_server():
    """moto's threaded server on a free port; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def fake_aws(monkeypatch, tmp_path, url: str, region: str = REGION) -> None:
    """Dummy credentials and region, no profile or config files, and a fresh moto state."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()


class AwsClients:
    """boto3 clients pointed at a moto server, and the tests' bucket created in its fresh state.
    Make it after ``fake_aws``: the clients take its credentials."""

    def __init__(self, url: str, bucket: str):
        self.url, self.bucket = url, bucket
        self.s3 = self.client("s3")
        self.sm = self.client("sagemaker")
        self.s3.create_bucket(Bucket=bucket)

    def client(self, service: str):
        import boto3

        return boto3.client(service, region_name=REGION, endpoint_url=self.url)

    def keys(self) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", []))


def _update_endpoint(self):
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow

    backend = self.sagemaker_backend
    name = self._get_param("EndpointName")
    backend.describe_endpoint(name)  # moto's own "Could not find endpoint" error
    config = backend.describe_endpoint_config(self._get_param("EndpointConfigName"))
    endpoint = backend.endpoints[name]
    endpoint.endpoint_config_name = config["EndpointConfigName"]
    endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
    endpoint.last_modified_time = utcnow()
    return ActionResult({"EndpointArn": endpoint.arn})


@contextlib.contextmanager
def moto_update_endpoint():
    """SageMaker UpdateEndpoint in moto's server while the context lasts; a moto that has its own is left alone.

    Written for moto 5.2.5, which has no UpdateEndpoint action. This one is added to moto's
    SageMakerResponse and works on its SageMaker backend: the endpoint switches to the new config at
    once, as a real blue/green update does when it succeeds (moto endpoints are InService at once).
    """
    from moto.sagemaker.responses import SageMakerResponse

    patched = not hasattr(SageMakerResponse, "update_endpoint")
    if patched:
        SageMakerResponse.update_endpoint = _update_endpoint
    try:
        yield
    finally:
        if patched:
            del SageMakerResponse.update_endpoint


def moto_job_statuses(monkeypatch):
    """Make moto's own backend answer DescribeTrainingJob with these states, one per call, once the
    job exists: ``use(("InProgress", "Starting"), ..., ("Failed", "Failed", "reason"))``.

    Written for moto 5.2.5, whose training jobs run nothing: a created job is ``Completed`` at once
    and never progresses or fails. This wraps SageMakerModelBackend.describe_training_job (undone by
    ``monkeypatch``) to set the job's status, secondary status and failure reason first.
    """
    from moto.sagemaker.models import SageMakerModelBackend

    original = SageMakerModelBackend.describe_training_job

    def use(*states):
        queue = list(states)

        def describe(self, training_job_name):
            job = self.training_jobs.get(training_job_name)
            if job is not None and queue:
                status, secondary, *reason = queue.pop(0)
                job.training_job_status, job.secondary_status = status, secondary
                if reason:
                    job.failure_reason = reason[0]
            return original(self, training_job_name)

        monkeypatch.setattr(SageMakerModelBackend, "describe_training_job", describe)

    return use
