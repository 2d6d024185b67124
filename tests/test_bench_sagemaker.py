"""``loraship bench --sagemaker-endpoint`` with real boto3 calls (botocore's SigV4 signer and credential chain) over
HTTP to a moto server started here on 127.0.0.1.

What moto 5.2.5 lacks, and how these tests stand in for it:

- InvokeEndpoint runs no model: it answers from a queue of results set through moto's own API
  (``/moto-api/static/sagemaker/endpoint-results``), one result per distinct request (the same request gets the
  same result). The tests queue LMI and OpenAI replies, and send one prompt so that every request is the same.
- InvokeEndpointWithResponseStream does not exist: ``moto_aws.moto_response_stream`` adds it to moto's server,
  answering from the same queue with the body cut into ``PayloadPart`` events of AWS's event-stream encoding
  (7 bytes each, so lines arrive in pieces). They are sent all at once, so the TTFT measured is moto's, not a
  model's; what is checked is that it is measured from the event stream, per request.
- moto checks no signature (its IAM authentication is off by default and covers few services): the signed
  requests are captured with botocore's ``before-send`` hook, their headers checked, and their SigV4 signature
  recomputed here from AWS's specification with the test's credentials.
- InvokeEndpoint does not check that the endpoint, inference component or variant exist; DescribeEndpoint (the
  control plane, which the bench records) does, so the tests create the endpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from urllib.parse import urlsplit

import pytest
import requests
from moto_aws import REGION, AwsClients, fake_aws, moto_response_stream, moto_server
from test_bench import dataset, level

from loraship.cli import main
from loraship.evaluation.bench.client import SageMakerTransport

ENDPOINT = "faq-bench"
SECRET = "testing"  # fake_aws's secret access key


@pytest.fixture(scope="module")
def moto_url():
    with moto_response_stream(), moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    """Dummy credentials, a fresh moto with the endpoint, boto3 pointed at moto through AWS_ENDPOINT_URL (as a
    user would point it at a VPC endpoint), and the signed runtime requests captured as botocore sends them."""
    fake_aws(monkeypatch, tmp_path, moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    clients = AwsClients(moto_url, "unused-bucket")
    clients.sm.create_model(
        ModelName="m", ExecutionRoleArn="arn:aws:iam::123456789012:role/r", PrimaryContainer={"Image": "lmi"}
    )
    clients.sm.create_endpoint_config(
        EndpointConfigName="c",
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.g4dn.xlarge"}
        ],
    )
    clients.sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="c")
    sent = []
    original = SageMakerTransport.__init__

    def capture(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.client.meta.events.register("before-send.sagemaker-runtime", lambda request, **_: sent.append(request))

    monkeypatch.setattr(SageMakerTransport, "__init__", capture)
    clients.sent = sent
    return clients


def queue(moto_url: str, *bodies: str, content_type: str = "application/json") -> None:
    results = [
        {"Body": b, "ContentType": content_type, "InvokedProductionVariant": "AllTraffic", "CustomAttributes": ""}
        for b in bodies
    ]
    r = requests.post(
        f"{moto_url}/moto-api/static/sagemaker/endpoint-results",
        json={"account_id": "123456789012", "region": REGION, "results": results},
        timeout=10,
    )
    r.raise_for_status()


def run(tmp_path, *extra: str) -> tuple[int, dict, list[dict]]:
    out = tmp_path / "out"
    code = main(
        ["bench", "--sagemaker-endpoint", ENDPOINT, "--region", REGION, "--out", str(out), "--warmup", "0",
         "--no-cold-probe", "--dataset", dataset(tmp_path, ["What is SageMaker?"]), *extra]
    )  # fmt: skip
    result = json.loads((out / "bench.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    return code, result, records


def _header(request, name: str) -> str:
    for key, value in request.headers.items():
        if key.lower() == name.lower():
            return value.decode() if isinstance(value, bytes) else value
    raise KeyError(name)


def sigv4(request, secret: str, region: str, service: str) -> str:
    """The signature AWS Signature Version 4 gives ``request`` (botocore's prepared request), from the spec: a
    canonical request (method, URI, query, the signed headers, the payload's SHA-256), the string to sign, and
    the HMAC chain of date, region, service and ``aws4_request``."""
    auth = _header(request, "Authorization")
    fields = dict(part.strip().split("=", 1) for part in auth.split(" ", 1)[1].split(","))
    signed = fields["SignedHeaders"].split(";")
    amz_date = _header(request, "X-Amz-Date")
    url = urlsplit(request.url)

    def value(name: str) -> str:
        return url.netloc if name == "host" else " ".join(_header(request, name).split())

    body = request.body or b""
    body = body.encode() if isinstance(body, str) else body
    canonical = "\n".join(
        [
            request.method,
            url.path,
            url.query,
            "".join(f"{name}:{value(name)}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


LMI_REPLY = json.dumps(
    {"generated_text": "a b c d", "details": {"generated_tokens": 4, "prompt_tokens": 9, "finish_reason": "length"}}
)


def test_invoke_endpoint_is_signed_and_measured(tmp_path, aws, moto_url):
    queue(moto_url, LMI_REPLY)
    code, result, records = run(
        tmp_path, "--inference-component", "ic-faq", "--target-variant", "AllTraffic", "--concurrency", "2",
        "--requests", "4", "--max-new-tokens", "4",
    )  # fmt: skip
    assert code == 0
    lv = level(result, "concurrency=2")
    assert lv["status_counts"] == {"200": 4}, lv["error_examples"]
    assert lv["output_tokens"] == 16 and lv["input_tokens"] == 36  # the queued reply's details
    assert all(r["tokens_from"] == "server" and r["finish_reason"] == "length" for r in records)
    target = result["target"]
    assert (target["kind"], target["endpoint"], target["region"]) == ("sagemaker", ENDPOINT, REGION)
    assert (target["inference_component"], target["target_variant"]) == ("ic-faq", "AllTraffic")
    described = result["server"]["sagemaker"]["describe_endpoint"]
    assert described["available"] and described["body"]["EndpointStatus"] == "InService"
    assert "SageMaker endpoint `faq-bench` in us-east-1" in (tmp_path / "out" / "summary.md").read_text()

    assert len(aws.sent) == 4
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    for request in aws.sent:
        assert request.method == "POST" and urlsplit(request.url).path == f"/endpoints/{ENDPOINT}/invocations"
        auth = _header(request, "Authorization")
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential=testing/{today}/{REGION}/sagemaker/aws4_request, ")
        signed = dict(p.strip().split("=", 1) for p in auth.split(" ", 1)[1].split(","))["SignedHeaders"]
        assert {"host", "x-amz-date", "content-type", "x-amzn-sagemaker-inference-component"} <= set(signed.split(";"))
        assert {"x-amzn-sagemaker-target-variant", "accept"} <= set(signed.split(";"))
        assert dt.datetime.strptime(_header(request, "X-Amz-Date"), "%Y%m%dT%H%M%SZ")
        assert _header(request, "X-Amzn-SageMaker-Inference-Component") == "ic-faq"
        assert _header(request, "Content-Type") == "application/json"
        assert auth.endswith("Signature=" + sigv4(request, SECRET, REGION, "sagemaker"))
        body = json.loads(request.body)
        assert body["inputs"] == "What is SageMaker?" and body["parameters"]["min_new_tokens"] == 4


def test_a_wrong_secret_does_not_give_the_same_signature(aws, moto_url, tmp_path):
    """The recomputation above is a real check: another secret gives another signature."""
    queue(moto_url, LMI_REPLY)
    assert run(tmp_path, "--concurrency", "1", "--requests", "1", "--max-new-tokens", "4")[0] == 0
    auth = _header(aws.sent[0], "Authorization")
    assert not auth.endswith("Signature=" + sigv4(aws.sent[0], "not-the-secret", REGION, "sagemaker"))
    assert auth.endswith("Signature=" + sigv4(aws.sent[0], SECRET, REGION, "sagemaker"))


def lmi_stream(tokens: int) -> str:
    lines = [json.dumps({"token": {"id": i, "text": f" t{i}"}}) for i in range(tokens - 1)]
    final = {"generated_tokens": tokens, "prompt_tokens": 9, "finish_reason": "length"}
    lines.append(json.dumps({"token": {"id": 9, "text": " end"}, "generated_text": "...", "details": final}))
    return "\n".join(lines) + "\n"


def test_response_stream_gives_ttft_from_the_event_stream(tmp_path, aws, moto_url):
    queue(moto_url, lmi_stream(5), content_type="application/jsonlines")
    code, result, records = run(tmp_path, "--stream", "--concurrency", "2", "--requests", "4", "--max-new-tokens", "5")
    assert code == 0
    lv = level(result, "concurrency=2")
    assert lv["status_counts"] == {"200": 4}, lv["error_examples"]
    assert lv["latency"]["ttft_s"]["n"] == 4 and lv["output_tokens"] == 20
    for r in records:
        # Five token lines, cut into 7-byte parts: each line counted once, when its last byte arrived.
        assert r["chunks"] == 5 and len(r["itl"]) == 4 and 0 < r["ttft"] <= r["e2e"]
    assert {urlsplit(r.url).path for r in aws.sent} == {f"/endpoints/{ENDPOINT}/invocations-response-stream"}
    assert all(r.body and json.loads(r.body)["stream"] is True for r in aws.sent)
    assert all(sigv4(r, SECRET, REGION, "sagemaker") in _header(r, "Authorization") for r in aws.sent)


def test_openai_chat_through_the_response_stream(tmp_path, aws, moto_url):
    chunks = [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in ("Yes", ".")]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}})
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    queue(moto_url, body, content_type="text/event-stream")
    code, result, records = run(
        tmp_path, "--api", "openai-chat", "--model", "base", "--adapters", "faq", "--stream", "--concurrency", "1",
        "--requests", "2", "--max-new-tokens", "8",
    )  # fmt: skip
    assert code == 0
    lv = level(result, "concurrency=1")
    assert lv["ok"] == 2 and lv["output_tokens"] == 6 and lv["input_tokens"] == 24
    assert all(r["chunks"] == 2 and r["finish_reason"] == "stop" for r in records)
    sent = json.loads(aws.sent[0].body)
    assert sent["model"] == "faq" and sent["messages"] == [{"role": "user", "content": "What is SageMaker?"}]
    assert sent["max_tokens"] == 8 and sent["stream_options"] == {"include_usage": True}


def test_an_endpoint_that_does_not_answer_is_counted_as_connection_errors(tmp_path, aws, monkeypatch):
    from loraship.runtime import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    code, result, records = run(tmp_path, "--concurrency", "1", "--requests", "2", "--max-new-tokens", "4")
    assert code == 1
    assert level(result, "concurrency=1")["status_counts"] == {"connection_error": 2}
    assert len(aws.sent) == 2  # sent once each: no retries
    assert result["server"]["sagemaker"]["describe_endpoint"]["available"] is False


def test_no_region_is_a_clear_error(tmp_path, aws, monkeypatch, capsys):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    code = main(["bench", "--sagemaker-endpoint", ENDPOINT, "--out", str(tmp_path / "o"), "--concurrency", "1",
                 "--requests", "1"])  # fmt: skip
    assert code == 2
    assert "--sagemaker-endpoint: NoRegionError" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
