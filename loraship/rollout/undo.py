"""Undoing a failed rollout: the writes a ``Run`` recorded, reversed newest first.

The endpoint goes back to its previous config (or is deleted if this run created it), the
autoscaling of its variants back to what it was, and the new Model, EndpointConfig and uploaded
object are deleted.
"""

from __future__ import annotations

from ..core.aws import client_error
from .execute import Run


def roll_back(run: Run) -> list[str]:
    """Undo this run's writes, newest first; return what could not be undone."""
    left = []
    for kind, name, saved in reversed(run.undo):
        try:
            if kind == "endpoint_update":
                run.log(f"rolling endpoint {run.plan.endpoint_name} back to {name}")
                run.settle()
                ep = run.describe_endpoint()
                if ep and ep["EndpointConfigName"] != name:
                    run.sm.update_endpoint(EndpointName=run.plan.endpoint_name, EndpointConfigName=name)
                run.wait(name)
            elif kind == "endpoint":
                run.log(f"deleting endpoint {name} (this rollout created it)")
                run.settle()
                if run.describe_endpoint() is not None:
                    run.sm.delete_endpoint(EndpointName=name)
                run.wait(None)
            elif kind == "endpoint_config":
                run.sm.delete_endpoint_config(EndpointConfigName=name)
            elif kind == "model":
                run.sm.delete_model(ModelName=name)
            elif kind == "s3":
                run.s3.delete_object(Bucket=run.bucket, Key=name)
            elif kind == "scaling":
                _restore_scaling(run, name, saved)
        except Exception as exc:  # keep undoing the rest; report every leftover
            left.append(f"{kind} {name}: {client_error(exc)}")
    run.undo.clear()
    return left


def _restore_scaling(run: Run, rid: str, saved: dict | None) -> None:
    """Put a variant's scaling back as ``saved`` (None: not scaled)."""
    if run.scaling_of(rid):
        run.deregister_scaling(rid)
    if saved:
        t = saved["target"]
        run.register_scaling(rid, t["MinCapacity"], t["MaxCapacity"], saved["policies"])
