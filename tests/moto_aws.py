"""A moto server on 127.0.0.1 for tests that make real boto3 calls over HTTP, and the environment
that keeps those calls away from real AWS (dummy credentials, no AWS config files)."""

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
