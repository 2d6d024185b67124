"""What loraship's two AWS integrations share (``loraship rollout`` and ``loraship train --sagemaker``):
boto3 clients with one retry policy, one error text, the default region, and the names AWS accepts.

Part of the shared core: it imports nothing else of loraship, so training/ may use it.
"""

from __future__ import annotations

import re

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")
#: SageMaker's pattern for endpoint, model and training-job names.
RESOURCE_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def default_region() -> str | None:
    """The region boto3 would use (AWS_DEFAULT_REGION, the profile), or None."""
    import boto3

    return boto3.session.Session().region_name


def clients(region: str, endpoint_url: str | None, *names: str) -> tuple:
    """One boto3 client per service name, in order; standard retries (5 attempts)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region)
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    return tuple(session.client(name, endpoint_url=endpoint_url, config=config) for name in names)


def client_error(exc) -> str:
    """``Code: Message`` of a botocore ClientError (the exception's type and text for anything else)."""
    err = getattr(exc, "response", {}).get("Error", {})
    return f"{err.get('Code', type(exc).__name__)}: {err.get('Message', exc)}"
