"""A moto server on 127.0.0.1 for tests that make real boto3 calls over HTTP, the environment
that keeps those calls away from real AWS (dummy credentials, no AWS config files), and the
patches of moto's internals that stand in for what moto lacks (each names the moto it was written for)."""

from __future__ import annotations

import binascii
import contextlib
import struct

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


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of AWS's event-stream encoding: prelude (total and headers lengths, their CRC32), headers
    (string values), payload, and the CRC32 of all before it."""
    encoded = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
        for name, value in headers.items()
    )
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


PART_BYTES = 7  # payload parts cut the container's lines anywhere, as a real stream's parts may


def _invoke_endpoint_with_response_stream(self):
    import base64
    import json

    params = self._get_params()
    unique = {k: v for k, v in self.headers.items() if k.lower().startswith("x-amzn-sagemaker")}
    unique["Accept"] = self.headers.get("Accept")
    unique["Body"] = self.body
    body, content_type, variant, _ = self.sagemakerruntime_backend.invoke_endpoint(
        endpoint_name=params.get("EndpointName"), unique_repr=base64.b64encode(json.dumps(unique).encode("utf-8"))
    )
    data = body.encode() if isinstance(body, str) else body
    event = {":event-type": "PayloadPart", ":content-type": "application/octet-stream", ":message-type": "event"}
    stream = b"".join(event_message(event, data[i : i + PART_BYTES]) for i in range(0, len(data), PART_BYTES))
    headers = {"Content-Type": "application/vnd.amazon.eventstream", "X-Amzn-SageMaker-Content-Type": content_type}
    if variant:
        headers["x-Amzn-Invoked-Production-Variant"] = variant
    return 200, headers, stream


@contextlib.contextmanager
def moto_response_stream():
    """sagemaker-runtime's InvokeEndpointWithResponseStream in moto's server while the context lasts (start the
    server inside it); a moto that has its own is left alone.

    Written for moto 5.2.5, which has InvokeEndpoint only. This one answers from the same queue of results
    (``/moto-api/static/sagemaker/endpoint-results``), the body cut into ``PayloadPart`` events of PART_BYTES
    bytes, all sent at once. moto's server picks a backend by the signing name, ``sagemaker`` for both SageMaker
    clients, and sends only paths ending in ``invocations`` to the runtime: the stream's path is added there.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.sagemakerruntime import urls
    from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

    if hasattr(SageMakerRuntimeResponse, "invoke_endpoint_with_response_stream"):
        yield
        return
    path = "{0}/endpoints/(?P<name>[^/]+)/invocations-response-stream$"
    infer = DomainDispatcherApplication.infer_service_region_host

    def infer_runtime(self, environ, path_info):
        host = infer(self, environ, path_info)
        if host and path_info.endswith("/invocations-response-stream") and host.startswith("api.sagemaker."):
            host = "runtime." + host.removeprefix("api.")
        return host

    SageMakerRuntimeResponse.invoke_endpoint_with_response_stream = _invoke_endpoint_with_response_stream
    urls.url_paths[path] = urls.response.dispatch
    DomainDispatcherApplication.infer_service_region_host = infer_runtime
    try:
        yield
    finally:
        DomainDispatcherApplication.infer_service_region_host = infer
        urls.url_paths.pop(path, None)
        del SageMakerRuntimeResponse.invoke_endpoint_with_response_stream
