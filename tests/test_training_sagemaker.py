"""``loraship train --sagemaker`` with real boto3 calls over HTTP to a moto server on 127.0.0.1,
and the job's entry script run here with temporary folders standing in for /opt/ml.

moto 5.2.5 implements CreateTrainingJob, DescribeTrainingJob and ListTrainingJobs (and S3). It runs
no container: a created job is ``Completed`` at once (SecondaryStatus ``Completed``) and its
ModelArtifacts point at ``<S3OutputPath>/<job>/output/model.tar.gz``, which nothing writes, so the
tests put a real adapter's archive there first. Its status never progresses and never fails, so
``moto_aws.moto_job_statuses`` makes moto's own backend step a job through given states. moto keeps what
DescribeTrainingJob shows for AlgorithmSpecification (adding a MetricDefinitions entry),
HyperParameters, InputDataConfig, OutputDataConfig, ResourceConfig, StoppingCondition and
CheckpointConfig; it drops Environment and RetryStrategy, has no StopTrainingJob, checks neither
the image nor the role, and lets a second CreateTrainingJob replace a job of the same name (AWS
refuses it), which is why the CLI checks the name is free first.
"""

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from moto_aws import AwsClients, fake_aws, moto_job_statuses, moto_server
from safetensors.torch import load_file

from loraship.cli import main
from loraship.training.config import DEFAULT_CONFIG, load_config
from loraship.training.sagemaker import (
    CHECKPOINT_DIR,
    DEFAULT_MODEL_PACKAGE,
    ENTRYPOINT,
    JobFailed,
    JobOptions,
    SubmitRefused,
    make_plan,
    run_job,
)
from loraship.training.sagemaker_entry import (
    JobStepFailed,
    drop_incomplete_checkpoints,
    export_model,
    resume_flags,
    train_and_export,
)
from loraship.training.sagemaker_entry import main as entry_main

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
BUCKET = "loraship-training"
GPU = "ml.g5.2xlarge"
#: A tiny run: two optimizer steps, a checkpoint after the first.
FAST = [
    "train.max_steps=2",
    "train.batch_size=2",
    "train.grad_accum=1",
    "train.eval_every=0",
    "train.checkpoint_every=1",
    "data.test_size=4",
]


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    """Dummy credentials, a fresh moto state with the bucket, and boto3 clients pointed at moto."""
    fake_aws(monkeypatch, tmp_path, moto_url)

    class Clients(AwsClients):
        def jobs(self):
            return [j["TrainingJobName"] for j in self.sm.list_training_jobs()["TrainingJobSummaries"]]

        def read(self, key) -> bytes:
            return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    return Clients(moto_url, BUCKET)


@pytest.fixture
def job_statuses(monkeypatch):
    return moto_job_statuses(monkeypatch)


@pytest.fixture
def faq_subset(tmp_path) -> Path:
    """A data file of its own (20 FAQ rows), to see that the job gets this one."""
    from loraship.training.data import FAQ_CSV

    path = tmp_path / "faq-subset.csv"
    path.write_text("".join(FAQ_CSV.read_text(encoding="utf-8").splitlines(keepends=True)[:20]), encoding="utf-8")
    return path


def cli(aws, *args, job="faq-job"):
    return main(
        [
            "train",
            "--sagemaker",
            "--role",
            ROLE,
            "--bucket",
            BUCKET,
            "--instance-type",
            GPU,
            "--job-name",
            job,
            "--endpoint-url",
            aws.url,
            *args,
        ]
    )


# -- dry run and submission ------------------------------------------------------------------------


def test_dry_run_prints_the_request_and_creates_nothing(aws, capsys):
    assert cli(aws, "--dry-run", "--set", "train.epochs=1", "--spot", "--max-run", "3600") == 0
    plan = json.loads(capsys.readouterr().out)
    req = plan["create_training_job"]
    root = f"s3://{BUCKET}/loraship/train/faq-job"
    assert req["TrainingJobName"] == "faq-job" and req["RoleArn"] == ROLE
    assert req["ResourceConfig"] == {"InstanceType": GPU, "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert req["AlgorithmSpecification"]["TrainingImage"].endswith("/pytorch-training:2.8.0-gpu-py312")
    assert req["AlgorithmSpecification"]["ContainerEntrypoint"] == ENTRYPOINT
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]} == {
        "train": f"{root}/data/",
        "code": f"{root}/code/",
    }
    assert req["OutputDataConfig"] == {"S3OutputPath": f"{root}/output"}
    assert req["CheckpointConfig"] == {"S3Uri": f"{root}/checkpoints", "LocalPath": CHECKPOINT_DIR}
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    # The default model is prepared inside the job from the same pinned package.
    assert req["HyperParameters"] == {
        "config": "/opt/ml/input/data/code/training_config.yaml",
        "default_model_package": DEFAULT_MODEL_PACKAGE,
    }
    assert plan["resolved_config"]["train"]["epochs"] == 1
    assert plan["resolved_config"]["data"]["path"] == "/opt/ml/input/data/train/amazon_sagemaker_faqs.csv"
    assert plan["model_artifact"] == f"{root}/output/faq-job/output/model.tar.gz"
    assert [u["s3_uri"] for u in plan["uploads"]] == [
        f"{root}/data/amazon_sagemaker_faqs.csv",
        f"{root}/code/source.tar.gz",
        f"{root}/code/training_config.yaml",
    ]
    assert aws.keys() == [] and aws.jobs() == []


def test_a_cpu_instance_gets_the_cpu_image_and_a_hub_id_passes_through(aws):
    plan = make_plan(
        JobOptions(
            config=DEFAULT_CONFIG,
            overrides=["model.path=HuggingFaceTB/SmolLM2-135M-Instruct"],
            role=ROLE,
            bucket=BUCKET,
            instance_type="ml.m5.xlarge",
        )
    )
    assert plan.image_uri.endswith("/pytorch-training:2.8.0-cpu-py312")
    assert plan.resolved_config["model"]["path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "default_model_package" not in plan.request["HyperParameters"]
    assert [c["ChannelName"] for c in plan.request["InputDataConfig"]] == ["train", "code"]


def test_a_quantized_config_installs_the_gpu_extra_in_the_job(aws):
    plan = make_plan(JobOptions(config=DEFAULT_CONFIG, overrides=["model.quantize=4bit"], role=ROLE, bucket=BUCKET))
    assert plan.request["HyperParameters"]["extras"] == "gpu"


def test_a_region_without_an_image_names_image_uri(aws):
    opts = JobOptions(config=DEFAULT_CONFIG, role=ROLE, bucket=BUCKET, region="xx-nowhere-1")
    with pytest.raises(
        SubmitRefused, match="no PyTorch 2.8.0 training image for ml.g5.2xlarge in xx-nowhere-1.*pass --image-uri"
    ):
        make_plan(opts)
    opts.image_uri = "123456789012.dkr.ecr.xx-nowhere-1.amazonaws.com/mine:1"
    assert make_plan(opts).request["AlgorithmSpecification"]["TrainingImage"] == opts.image_uri


def test_submission_uploads_the_inputs_and_creates_the_job(aws, tiny_neox, faq_subset, capsys):
    assert (
        cli(
            aws,
            "--set",
            f"data.path={faq_subset}",
            "--set",
            f"model.path={tiny_neox}",
            "--set",
            "train.max_steps=7",
            "--set",
            "lora.r=4",
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    root = "loraship/train/faq-job"
    model_files = sorted(
        f"{root}/model/{p.relative_to(tiny_neox).as_posix()}" for p in tiny_neox.rglob("*") if p.is_file()
    )
    assert aws.keys() == sorted(
        [f"{root}/code/source.tar.gz", f"{root}/code/training_config.yaml", f"{root}/data/faq-subset.csv", *model_files]
    )
    assert aws.read(f"{root}/data/faq-subset.csv") == faq_subset.read_bytes()

    with tarfile.open(fileobj=io.BytesIO(aws.read(f"{root}/code/source.tar.gz"))) as tar:
        names = set(tar.getnames())
    assert {
        "training/sagemaker_entry.py",
        "training/recipe.py",
        "training/configs/sagemaker_faqs.yaml",
        "training/data/LICENSE-amazon-faqs.txt",
        "handler/pipelines/instruction.py",
        "evaluation/gate/__init__.py",
        "loraship/cli/__init__.py",
        "setup.cfg",
        "pyproject.toml",
    } <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    # The resolved config: the overrides applied, the paths pointing at the job's channels, and
    # exactly what load_config reads.
    config = aws.read(f"{root}/code/training_config.yaml").decode()
    resolved = yaml.safe_load(config)
    assert resolved["train"]["max_steps"] == 7 and resolved["lora"]["r"] == 4
    assert resolved["data"]["path"] == "/opt/ml/input/data/train/faq-subset.csv"
    assert resolved["model"]["path"] == "/opt/ml/input/data/model"
    local = load_config(
        DEFAULT_CONFIG, [f"data.path={faq_subset}", f"model.path={tiny_neox}", "train.max_steps=7", "lora.r=4"]
    ).to_dict()
    for section in ("data", "model"):
        del local[section]["path"], resolved[section]["path"]
    assert resolved == local

    job = aws.sm.describe_training_job(TrainingJobName="faq-job")
    assert result["training_job_arn"] == job["TrainingJobArn"]
    assert job["RoleArn"] == ROLE
    assert job["ResourceConfig"]["InstanceType"] == GPU
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]} == {
        "train": f"s3://{BUCKET}/{root}/data/",
        "code": f"s3://{BUCKET}/{root}/code/",
        "model": f"s3://{BUCKET}/{root}/model/",
    }
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/{root}/output"
    assert job["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/{root}/checkpoints", "LocalPath": CHECKPOINT_DIR}
    assert job["HyperParameters"] == {"config": "/opt/ml/input/data/code/training_config.yaml"}
    assert job["AlgorithmSpecification"]["ContainerEntrypoint"] == ENTRYPOINT
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == result["model_artifact"]
    assert "aws s3 cp " + result["model_artifact"] in result["fetch_later"]


def test_the_dry_run_request_is_the_one_sent(aws, capsys):
    assert cli(aws, "--dry-run", "--spot") == 0
    request = json.loads(capsys.readouterr().out)["create_training_job"]
    assert cli(aws, "--spot") == 0
    job = aws.sm.describe_training_job(TrainingJobName="faq-job")
    del job["AlgorithmSpecification"]["MetricDefinitions"]  # moto's addition
    assert {key: job[key] for key in request} == request


def test_aws_endpoint_url_reaches_moto_and_a_taken_job_name_is_refused(aws, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.url)
    args = ["train", "--sagemaker", "--role", ROLE, "--bucket", BUCKET, "--job-name", "faq-job"]
    assert main(args) == 0
    keys = aws.keys()
    capsys.readouterr()
    assert main(args) == 2
    assert "training job faq-job already exists: choose another --job-name" in capsys.readouterr().err
    assert aws.keys() == keys


def test_a_missing_bucket_is_refused_before_any_upload(aws, capsys):
    assert main(["train", "--sagemaker", "--role", ROLE, "--bucket", "no-such-bucket", "--endpoint-url", aws.url]) == 2
    assert "cannot use bucket no-such-bucket" in capsys.readouterr().err
    assert aws.jobs() == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--role", "sagemaker-execution"], "--role 'sagemaker-execution' must be an IAM role ARN"),
        (["--instance-type", "g5.2xlarge"], "--instance-type 'g5.2xlarge' must be a SageMaker type ml.<family>.<size>"),
        (
            ["--instance-type", "ml.m5.xlarge", "--set", "model.quantize=4bit"],
            "model.quantize=4bit needs a CUDA GPU (bitsandbytes) and ml.m5.xlarge has none",
        ),
        (
            ["--instance-type", "ml.c5.xlarge", "--set", "model.precision=fp16-mixed"],
            "model.precision=fp16-mixed needs a CUDA GPU and ml.c5.xlarge has none",
        ),
        (["--set", "data.path=no/such/file.csv"], "no/such/file.csv is not a file"),
        (["--set", "train.nope=1"], "train.nope: unknown key"),
        (["--bucket", "My_Bucket"], "--bucket 'My_Bucket' is not a bucket name"),
        (["--bucket", "s3://loraship-training"], "is not a bucket name"),
        (["--job-name", "faq_job"], "--job-name 'faq_job'"),
        (["--set", "model.path=./no-such-model"], "model.path: model './no-such-model' is neither"),
    ],
)
def test_bad_inputs_fail_before_anything_is_uploaded(aws, capsys, args, message):
    assert cli(aws, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("loraship train: error: ") and message in err
    assert aws.keys() == [] and aws.jobs() == []


def test_without_the_sdk_the_error_says_what_to_install(aws, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sagemaker.core", None)  # as if sagemaker-core were not installed
    assert cli(aws) == 2
    assert (
        "--sagemaker needs the SageMaker SDK (sagemaker-core): pip install 'loraship[sagemaker]'"
        in capsys.readouterr().err
    )
    assert aws.keys() == [] and aws.jobs() == []


def test_the_sdk_is_imported_only_for_a_sagemaker_run():
    code = (
        "import sys, loraship.cli, loraship.training.sagemaker; "
        "print(sorted({'sagemaker', 'boto3'} & set(sys.modules)))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_problems_are_reported_together(aws, capsys):
    assert main(["train", "--sagemaker", "--role", "nope", "--instance-type", "p4d", "--endpoint-url", aws.url]) == 2
    err = capsys.readouterr().err
    assert "--instance-type 'p4d'" in err and "--role 'nope'" in err and "--bucket is required" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bucket", BUCKET], "--bucket: only with --sagemaker"),
        (["--dry-run", "--wait"], "--wait, --dry-run: only with --sagemaker"),
        (["--sagemaker", "--resume"], "--resume and --overwrite are for local runs"),
        (["--sagemaker", "--output", "out"], "--output with --sagemaker is where --wait puts the adapter: add --wait"),
    ],
)
def test_cli_flags_that_do_not_fit_together(capsys, args, message):
    assert main(["train", *args]) == 2
    assert f"loraship train: error: {message}" in capsys.readouterr().err


# -- the entry script, here with temporary folders for /opt/ml -----------------------------------


def test_resume_decision_and_incomplete_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert resume_flags(out) == []  # a fresh job
    out.mkdir()
    assert resume_flags(out) == []
    (out / "training_config.yaml").write_text("seed: 0\n")
    assert resume_flags(out) == ["--resume"]  # an earlier attempt started: continue it
    for step, files in ((1, ("trainable.safetensors", "optimizer.pt", "state.pt")), (2, ("trainable.safetensors",))):
        (out / f"checkpoint-00000{step}").mkdir()
        for name in files:
            (out / f"checkpoint-00000{step}" / name).write_bytes(b"x")
    assert drop_incomplete_checkpoints(out) == [out / "checkpoint-000002"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-000001", "training_config.yaml"]
    (out / "training_manifest.json").write_text("{}")
    assert resume_flags(out) is None  # it finished: only export it


def test_export_copies_the_run_without_checkpoints(tmp_path):
    out, model = tmp_path / "run", tmp_path / "model"
    with pytest.raises(
        JobStepFailed, match="without adapter_model.safetensors, adapter_config.json, training_manifest.json"
    ):
        export_model(out, model)
    (out / "checkpoint-000003").mkdir(parents=True)
    (out / "split").mkdir()
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "training_manifest.json",
        "split/test.jsonl",
        ".loss_curve.png.tmp",
        "checkpoint-000003/state.pt",
    ):
        (out / name).write_text(name)
    export_model(out, model)
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "split",
        "split/test.jsonl",
        "training_manifest.json",
    ]


def test_a_failed_step_becomes_the_jobs_failure_reason(tmp_path):
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"config": "c.yaml"}))
    # /opt/ml/code is missing here, so the first step (pip install) fails without installing anything.
    assert entry_main(tmp_path) == 1
    assert "pip install --no-cache-dir " + str(tmp_path / "code") in (tmp_path / "output" / "failure").read_text()


@pytest.fixture(scope="module")
def job_run(tiny_neox, tmp_path_factory):
    """What a job does after installing: ``loraship train`` on the resolved config into the
    checkpoint dir, then the export to the model dir (here a real 2-step run on the tiny model)."""
    opt_ml = tmp_path_factory.mktemp("opt_ml")
    config = opt_ml / "training_config.yaml"
    config.write_text(yaml.safe_dump(load_config(DEFAULT_CONFIG, [f"model.path={tiny_neox}", *FAST]).to_dict()))
    train_and_export(config, opt_ml / "checkpoints" / "run", opt_ml / "model")
    return opt_ml


def test_the_job_trains_into_the_checkpoint_dir_and_exports_the_adapter(job_run):
    out, model = job_run / "checkpoints" / "run", job_run / "model"
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-000001"]
    assert not list(model.glob("checkpoint-*"))
    manifest = json.loads((model / "training_manifest.json").read_text())
    assert manifest["run"]["steps"] == 2 and manifest["run"]["resumed_from_step"] is None
    assert (model / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()


def test_a_restarted_job_resumes_from_the_synced_checkpoint(job_run, tmp_path):
    """A spot interruption after checkpoint 1, with checkpoint 2's upload cut short: the restarted
    job drops the broken checkpoint, resumes from step 1 and ends with the same adapter."""
    out = tmp_path / "checkpoints" / "run"
    shutil.copytree(job_run / "checkpoints" / "run", out)
    for name in ("training_manifest.json", "adapter_model.safetensors", "adapter_config.json", "loss_curve.png"):
        (out / name).unlink()
    (out / "checkpoint-000002").mkdir()
    shutil.copy(out / "checkpoint-000001" / "trainable.safetensors", out / "checkpoint-000002")
    train_and_export(job_run / "training_config.yaml", out, tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "training_manifest.json").read_text())
    assert manifest["run"]["resumed_from_step"] == 1 and manifest["run"]["steps"] == 2
    resumed = load_file(tmp_path / "model" / "adapter_model.safetensors")
    for key, value in load_file(job_run / "model" / "adapter_model.safetensors").items():
        torch.testing.assert_close(resumed[key], value)
    # Restarted once more after it finished: nothing is trained again (this python would fail).
    train_and_export(job_run / "training_config.yaml", out, tmp_path / "model2", python="/bin/false")
    assert (tmp_path / "model2" / "adapter_model.safetensors").is_file()


# -- --wait ----------------------------------------------------------------------------------------


def model_tarball(folder: Path) -> bytes:
    """/opt/ml/model as SageMaker archives it: its contents at the top of model.tar.gz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for item in sorted(folder.iterdir()):
            tar.add(item, arcname=item.name)
    return buf.getvalue()


def artifact_key(job):
    return f"loraship/train/{job}/output/{job}/output/model.tar.gz"


def test_wait_downloads_and_checks_the_adapter(aws, job_run, tmp_path, capsys):
    from loraship.handler.adapters import validate_adapter_dir

    aws.s3.put_object(Bucket=BUCKET, Key=artifact_key("faq-job"), Body=model_tarball(job_run / "model"))
    out = tmp_path / "adapter"
    assert cli(aws, "--wait", "--output", str(out)) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["status"] == "Completed" and result["adapter"] == str(out)
    assert "faq-job: Completed" in captured.err
    for name in ("adapter_model.safetensors", "adapter_config.json", "training_manifest.json", "split/test.jsonl"):
        assert (out / name).read_bytes() == (job_run / "model" / name).read_bytes()
    assert validate_adapter_dir(str(out))["target_modules"] == ["query_key_value"]
    assert result["eval_loss"] == json.loads((out / "training_manifest.json").read_text())["results"]["eval_loss"]


def test_wait_refuses_an_artifact_without_an_adapter(aws, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "training_manifest.json").write_text("{}")
    aws.s3.put_object(Bucket=BUCKET, Key=artifact_key("faq-job"), Body=model_tarball(tmp_path / "model"))
    out = tmp_path / "adapter"
    assert cli(aws, "--wait", "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert f"s3://{BUCKET}/{artifact_key('faq-job')} holds no adapter_model.safetensors, adapter_config.json" in err
    assert not out.exists()


def test_wait_refuses_a_non_empty_output_before_submitting(aws, tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "old.txt").write_text("x")
    assert cli(aws, "--wait", "--output", str(tmp_path / "adapter")) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert aws.keys() == [] and aws.jobs() == []


def test_wait_prints_each_status_change_and_reports_a_failure(aws, job_statuses, tmp_path):
    job_statuses(
        ("InProgress", "Starting"),
        ("InProgress", "Starting"),
        ("InProgress", "Training"),
        ("Failed", "Failed", "AlgorithmError: loraship train exited with 2"),
    )
    logged = []
    opts = JobOptions(
        config=DEFAULT_CONFIG,
        role=ROLE,
        bucket=BUCKET,
        endpoint_url=aws.url,
        job_name="faq-job",
        wait=True,
        output=tmp_path / "adapter",
        poll=0,
    )
    with pytest.raises(JobFailed, match="training job faq-job is Failed: AlgorithmError: loraship train exited"):
        run_job(opts, log=logged.append)
    assert [m for m in logged if m.startswith("faq-job:")] == [
        "faq-job: InProgress (Starting)",
        "faq-job: InProgress (Training)",
        "faq-job: Failed",
    ]
    assert not (tmp_path / "adapter").exists()


def _imports(nodes) -> set[str]:
    import ast

    names = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module}


def test_the_entry_script_needs_only_the_standard_library():
    """It runs before the source is installed, with the image's bare Python: it imports the standard
    library and training.outputs, whose top level (its functions import torch lazily) does too."""
    import ast

    from loraship.training import outputs, sagemaker_entry

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    entry = _imports(ast.walk(ast.parse(Path(sagemaker_entry.__file__).read_text()))) - {"outputs"}
    top = _imports(ast.parse(Path(outputs.__file__).read_text()).body)
    assert {m for m in entry | top if m.split(".")[0] not in stdlib} == set()
