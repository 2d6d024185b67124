"""``loraship rollout`` with real boto3 calls over HTTP to a moto server started here on 127.0.0.1.

moto 5.2 implements S3, the SageMaker Model / EndpointConfig / Endpoint calls, sagemaker-runtime's
InvokeEndpoint (canned replies, configured through moto's ``/moto-api/static/sagemaker/endpoint-results``)
and Application Auto Scaling. It lacks SageMaker's UpdateEndpoint: ``moto_aws.moto_update_endpoint`` adds
that one action to moto's own SageMaker backend (the endpoint switches to the new config, as it does
when a real blue/green update succeeds; moto endpoints are InService at once). Its instance-type enum
predates g5, hence ml.g4dn.* here.
"""

import json
import os
import tarfile

import pytest
import requests
from moto_aws import REGION, AwsClients, fake_aws, moto_server, moto_update_endpoint

from loraship.build import build_model_dir
from loraship.cli import main
from loraship.package import adapter_sha256, package_model_dir
from loraship.rollout import LMI_ACCOUNT, LMI_TAG, RolloutFailed, RolloutOptions, RolloutRefused, lmi_image_uri, rollout

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
BUCKET = "loraship-artifacts"
GPU = "ml.g4dn.xlarge"


@pytest.fixture(scope="module")
def moto_url():
    with moto_update_endpoint(), moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    """Dummy credentials, a fresh moto state with the bucket, and boto3 clients pointed at moto."""
    fake_aws(monkeypatch, tmp_path, moto_url)

    class Clients(AwsClients):
        def __init__(self):
            super().__init__(moto_url, BUCKET)
            self.scaling = self.client("application-autoscaling")

        def smoke_replies(self, *bodies):
            """Queue what moto's InvokeEndpoint answers next, one reply per smoke request."""
            results = [
                {
                    "Body": b if isinstance(b, str) else json.dumps(b),
                    "ContentType": "application/json",
                    "InvokedProductionVariant": "AllTraffic",
                    "CustomAttributes": "",
                }
                for b in bodies
            ]
            r = requests.post(
                f"{moto_url}/moto-api/static/sagemaker/endpoint-results",
                json={"account_id": "123456789012", "region": REGION, "results": results},
                timeout=10,
            )
            r.raise_for_status()

        def endpoint(self, name="faq-endpoint"):
            return self.sm.describe_endpoint(EndpointName=name)

        def model_names(self):
            return sorted(m["ModelName"] for m in self.sm.list_models()["Models"])

        def config_names(self):
            return sorted(c["EndpointConfigName"] for c in self.sm.list_endpoint_configs()["EndpointConfigs"])

    return Clients()


OK = {"generated_text": "Amazon SageMaker is a managed ML service."}


@pytest.fixture(scope="module")
def model_dir(tiny_neox, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    adapter = tmp_path_factory.mktemp("adapter") / "faq"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_neox), LoraConfig(r=2, init_lora_weights=False, task_type="CAUSAL_LM")
    ).save_pretrained(adapter)
    return build_model_dir(str(tiny_neox), tmp_path_factory.mktemp("md") / "md", {"faq": adapter})


@pytest.fixture(scope="module")
def artifacts(model_dir, tmp_path_factory):
    """Two different artifacts of the same gated adapter (v2 differs in one serving option)."""
    out = tmp_path_factory.mktemp("artifacts")
    profile = out / "v2.properties"
    profile.write_text("option.max_new_tokens=32\n")
    v1 = package_model_dir(model_dir, out / "v1.tar.gz", include_model=True).path
    v2 = package_model_dir(model_dir, out / "v2.tar.gz", include_model=True, profile=profile).path
    return v1, v2


def write_gate(path, verdict="pass", adapters=None, model_dir=None):
    if adapters is None:
        adapters = {"faq": {"sha256": adapter_sha256(model_dir / "adapters" / "faq"), "verdict": verdict}}
    checks = [{"adapter": "faq", "metric": "rougeL", "check": "non_inferiority", "status": verdict}]
    path.write_text(
        json.dumps(
            {
                "verdict": verdict,
                "checks": checks,
                "adapters": adapters,
                "policy_sha256": "ab" * 32,
                "eval_sha256": "cd" * 32,
            }
        )
    )
    return path


@pytest.fixture
def gate(model_dir, tmp_path):
    return write_gate(tmp_path / "gate.json", model_dir=model_dir)


def options(aws, artifact, gate, **kw):
    return RolloutOptions(
        artifact=artifact,
        gate_report=gate,
        bucket=BUCKET,
        endpoint_name="faq-endpoint",
        instance_type=kw.pop("instance_type", GPU),
        role=ROLE,
        region=REGION,
        endpoint_url=aws.url,
        poll=0.01,
        timeout=10,
        **kw,
    )


def assert_untouched(aws):
    assert aws.keys() == [] and aws.model_names() == [] and aws.config_names() == []
    assert aws.sm.list_endpoints()["Endpoints"] == []


# -- refusals: nothing is touched ------------------------------------------------------------------


def test_a_failed_gate_is_refused(aws, artifacts, model_dir, tmp_path):
    failed = write_gate(tmp_path / "gate.json", verdict="fail", model_dir=model_dir)
    with pytest.raises(RolloutRefused, match="gate verdict is 'fail'.*faq/rougeL/non_inferiority"):
        rollout(options(aws, artifacts[0], failed))
    assert_untouched(aws)


def test_a_file_that_is_not_a_gate_report_is_refused(aws, artifacts, tmp_path):
    """The gate reads its own report: an eval.json (or any other JSON) passed as --gate-report is refused."""
    other = tmp_path / "eval.json"
    other.write_text(json.dumps({"schema": "loraship.eval/1", "metrics": {}, "adapters": {}}))
    with pytest.raises(RolloutRefused, match="is not a `loraship gate` report: verdict is None"):
        rollout(options(aws, artifacts[0], other))
    assert_untouched(aws)


def test_an_adapter_changed_after_gating_is_refused(aws, model_dir, tmp_path, gate):
    tampered = tmp_path / "md"
    import shutil

    shutil.copytree(model_dir, tampered)
    config = tampered / "adapters" / "faq" / "adapter_config.json"
    cfg = json.loads(config.read_text())
    cfg["lora_alpha"] = cfg.get("lora_alpha", 8) * 2
    config.write_text(json.dumps(cfg))
    artifact = package_model_dir(tampered, tmp_path / "model.tar.gz", include_model=True).path
    with pytest.raises(RolloutRefused, match="adapter 'faq' in the artifact .* changed after gating"):
        rollout(options(aws, artifact, gate))
    ungated = write_gate(tmp_path / "other.json", adapters={"other": {"sha256": "00" * 32}})
    with pytest.raises(RolloutRefused, match="adapter 'faq' is in the artifact but was not gated"):
        rollout(options(aws, artifact, ungated))
    assert_untouched(aws)


def test_bad_inputs_are_refused_together(aws, artifacts, gate):
    opts = options(aws, artifacts[0], gate, instance_count=5, autoscale=(1, 2))
    opts.endpoint_name, opts.role = "bad_name", "not-an-arn"
    with pytest.raises(RolloutRefused) as err:
        rollout(opts)
    for fragment in ("--endpoint-name", "--role", "outside --autoscale 1:2"):
        assert fragment in str(err.value)
    assert_untouched(aws)


def test_dry_run_prints_the_plan_and_touches_nothing(aws, artifacts, gate, capsys):
    argv = [
        "rollout",
        "--artifact",
        str(artifacts[0]),
        "--gate-report",
        str(gate),
        "--bucket",
        BUCKET,
        "--endpoint-name",
        "faq-endpoint",
        "--instance-type",
        "ml.g5.2xlarge",
        "--role",
        ROLE,
        "--region",
        REGION,
        "--autoscale",
        "1:4",
        "--dry-run",
    ]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["image_uri"] == f"{LMI_ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/djl-inference:{LMI_TAG}"
    assert (
        plan["s3_uri"].startswith(f"s3://{BUCKET}/loraship/faq-endpoint/") and plan["instance_type"] == "ml.g5.2xlarge"
    )
    assert plan["adapters"] == {"faq": json.loads(gate.read_text())["adapters"]["faq"]["sha256"]}
    assert plan["autoscale"]["metric"] == "SageMakerVariantInvocationsPerInstance"
    assert [r.get("adapters") for r in plan["smoke_requests"]] == [None, "faq"]
    assert_untouched(aws)


# -- the real thing against moto -------------------------------------------------------------------


def test_creates_the_endpoint_smoke_tests_it_and_autoscales(aws, artifacts, gate):
    aws.smoke_replies(OK, OK)
    result = rollout(options(aws, artifacts[0], gate, instance_count=2, autoscale=(1, 4)))
    assert result["action"] == "created" and result["previous_endpoint_config_name"] is None
    ep = aws.endpoint()
    assert ep["EndpointStatus"] == "InService" and ep["EndpointConfigName"] == result["endpoint_config_name"]
    config = aws.sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == (GPU, 2)
    model = aws.sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["Image"] == lmi_image_uri(REGION)[0]
    assert model["PrimaryContainer"]["ModelDataUrl"] == result["s3_uri"]
    bucket, key = result["s3_uri"][5:].split("/", 1)
    head = aws.s3.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"]["sha256"] == result["artifact_sha256"]
    assert head["ContentLength"] == os.path.getsize(artifacts[0])
    assert [s["target"] for s in result["smoke"]] == ["base model", "faq"]
    rid = "endpoint/faq-endpoint/variant/AllTraffic"
    (target,) = aws.scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    (policy,) = aws.scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    spec = policy["TargetTrackingScalingPolicyConfiguration"]
    assert spec["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"


def test_updates_an_existing_endpoint_to_the_new_config(aws, artifacts, gate):
    aws.smoke_replies(OK, OK)
    first = rollout(options(aws, artifacts[0], gate))
    aws.smoke_replies(OK, OK)
    second = rollout(options(aws, artifacts[1], gate))
    assert second["action"] == "updated"
    assert second["previous_endpoint_config_name"] == first["endpoint_config_name"]
    assert aws.endpoint()["EndpointConfigName"] == second["endpoint_config_name"]
    # The previous Model and EndpointConfig stay, so an operator can go back by hand.
    assert aws.model_names() == sorted([first["model_name"], second["model_name"]])
    assert aws.config_names() == sorted([first["endpoint_config_name"], second["endpoint_config_name"]])
    assert len(aws.keys()) == 2


def test_a_failed_smoke_request_rolls_the_update_back(aws, artifacts, gate):
    aws.smoke_replies(OK, OK)
    first = rollout(options(aws, artifacts[0], gate))
    aws.smoke_replies(OK, {"error": "adapter faq failed to load", "code": 500, "type": "InternalError"})
    with pytest.raises(RolloutFailed, match=f"smoke request for faq got .*back on {first['endpoint_config_name']}"):
        rollout(options(aws, artifacts[1], gate))
    ep = aws.endpoint()
    assert ep["EndpointStatus"] == "InService" and ep["EndpointConfigName"] == first["endpoint_config_name"]
    # Only the first rollout's resources are left: the second's Model, EndpointConfig and upload are gone.
    assert aws.model_names() == [first["model_name"]]
    assert aws.config_names() == [first["endpoint_config_name"]]
    assert aws.keys() == [first["s3_uri"].split("/", 3)[3]]


def test_a_failed_first_rollout_leaves_nothing(aws, artifacts, gate):
    aws.smoke_replies("<html>502 Bad Gateway</html>")
    with pytest.raises(RolloutFailed, match="created by this run, was deleted"):
        rollout(options(aws, artifacts[0], gate, autoscale=(1, 2)))
    assert_untouched(aws)
    assert aws.scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_rollback_restores_the_autoscaling_an_instance_type_change_suspended(aws, artifacts, gate):
    aws.smoke_replies(OK, OK)
    first = rollout(options(aws, artifacts[0], gate, autoscale=(1, 3)))
    rid = "endpoint/faq-endpoint/variant/AllTraffic"
    aws.smoke_replies(OK, "not json")
    with pytest.raises(RolloutFailed):
        rollout(options(aws, artifacts[1], gate, instance_type="ml.g4dn.2xlarge"))
    assert aws.endpoint()["EndpointConfigName"] == first["endpoint_config_name"]
    (target,) = aws.scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    assert (
        len(aws.scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]) == 1
    )
    # The same change succeeding keeps the scaling the endpoint had.
    aws.smoke_replies(OK, OK)
    result = rollout(options(aws, artifacts[1], gate, instance_type="ml.g4dn.2xlarge"))
    assert result["autoscale"]["restored"] and (result["autoscale"]["min"], result["autoscale"]["max"]) == (1, 3)


def test_cli_rollout_finds_moto_through_aws_endpoint_url(aws, artifacts, gate, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.url)
    aws.smoke_replies(OK, OK)
    argv = [
        "rollout",
        "--artifact",
        str(artifacts[0]),
        "--gate-report",
        str(gate),
        "--bucket",
        BUCKET,
        "--endpoint-name",
        "faq-endpoint",
        "--instance-type",
        GPU,
        "--role",
        ROLE,
        "--region",
        REGION,
        "--poll",
        "0.01",
        "--timeout",
        "10",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "created"
    aws.smoke_replies(OK, "oops")
    assert main(argv[:2] + [str(artifacts[1])] + argv[3:]) == 1
    assert "rolled back" in capsys.readouterr().err
    assert main([*argv, "--bucket", "no-such-bucket"]) == 2


# -- the image ---------------------------------------------------------------------------------------


def test_the_sdk_lookup_and_the_pinned_pattern_agree():
    """The fallback (no SDK) gives what the SDK gives, for every region it claims to know."""
    pytest.importorskip("sagemaker.core.image_uris")
    from loraship.rollout import LMI_REGIONS

    for region in LMI_REGIONS:
        uri, source = lmi_image_uri(region)
        assert source == "sagemaker SDK image_uris"
        assert uri == f"{LMI_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/djl-inference:{LMI_TAG}"
    with pytest.raises(RolloutRefused, match="--image-uri"):
        lmi_image_uri("mars-east-1")


def test_without_the_sdk_the_pinned_pattern_is_used(monkeypatch):
    import sys

    for name in ("sagemaker", "sagemaker.core", "sagemaker.core.image_uris"):
        monkeypatch.setitem(sys.modules, name, None)
    assert lmi_image_uri("eu-west-1") == (
        f"{LMI_ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/djl-inference:{LMI_TAG}",
        "pinned pattern",
    )
    with pytest.raises(RolloutRefused, match="--image-uri"):
        lmi_image_uri("af-south-1")


def test_the_artifact_served_is_the_one_gated(artifacts):
    """The bytes rollout checks are the bytes SageMaker extracts: adapters hash from the archive."""
    with tarfile.open(artifacts[0], "r:gz") as tar:
        names = tar.getnames()
    assert "adapters/faq/adapter_model.safetensors" in names and "manifest.json" in names


def test_the_gate_and_the_artifact_hash_an_adapter_alike(model_dir, artifacts):
    """``loraship gate`` hashes adapters with loraship.core.hashing: it must agree with what rollout checks."""
    import loraship.core.hashing as hashing
    from loraship.package import read_archive

    folder = model_dir / "adapters" / "faq"
    assert hashing.adapter_sha256(folder) == adapter_sha256(folder) == read_archive(artifacts[0]).adapters["faq"]
