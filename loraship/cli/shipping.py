"""The commands that ship: package, rollout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import model_validator

from ..handler.settings import Flag, Settings
from ..rollout import RolloutOptions
from .flags import Command


class PackageOptions(Settings):
    model_dir: Annotated[Path, Flag(positional=True)]
    """a model dir written by `loraship build`"""
    out: Path | None = None
    """archive to write, e.g. model.tar.gz"""
    check: bool = False
    """only check that the model dir would load; write nothing"""
    include_model: bool = False
    """copy a local base model (option.model_id outside the model dir) into the archive as model/"""
    profile: Annotated[Path | None, Flag(metavar="FILE")] = None
    """properties merged over serving.properties in the archive, e.g. docker/serving.gpu.properties"""
    overwrite: bool = False
    """replace OUT if it exists"""

    @model_validator(mode="after")
    def _one_of(self):
        if (self.out is None) == (not self.check):
            raise ValueError("give exactly one of --out FILE and --check")
        return self


def package(opts: PackageOptions) -> int:
    """Check a model dir and write the SageMaker model artifact (model.tar.gz) with a manifest of hashes."""
    from ..package import package_model_dir

    art = package_model_dir(
        opts.model_dir, opts.out, include_model=opts.include_model, profile=opts.profile, overwrite=opts.overwrite
    )
    summary = {
        "artifact": str(art.path) if art.path else None,
        "sha256": art.sha256 or None,
        "model_id": art.manifest["model_id"],
        "model_source": art.manifest["model_source"],
        "adapters": art.manifest["adapters"],
    }
    print(json.dumps(summary, indent=2))
    return 0


def rollout(opts: RolloutOptions) -> int:
    """Roll a gated artifact out to a SageMaker endpoint (create or blue/green update), smoke-test it,
    roll back on failure."""
    from ..rollout import rollout as run_rollout

    print(json.dumps(run_rollout(opts, dry_run=opts.dry_run), indent=2))
    return 0


COMMANDS = [Command("package", package, PackageOptions), Command("rollout", rollout, RolloutOptions)]
