"""The conformance suite: the same HTTP cases against real DJL Serving and against loraship's host.

Every test here takes a server fixture parametrized over both (``servers.KINDS``), so each case runs
once per server with the same assertions. Where the servers differ by design, the test says so with
``differences.expect(case, srv.kind)`` and ``differences.py`` records why.

Real DJL Serving comes from ``$DJL_SERVING_HOME`` (``.ci/run`` and ``make test`` point it at
``../shared/djl-serving`` when that folder exists). Without it the ``djl`` half fails under
``CI=true`` and is skipped elsewhere, with the reason printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conf_support import serve
from servers import KINDS
from tiny_models import save_random_adapter


@pytest.fixture(scope="session")
def conformance_adapters(tiny_neox, tmp_path_factory) -> Path:
    """The allowed adapter root: alpha, beta (in the model dir) and gamma, delta (registered at runtime)."""
    root = tmp_path_factory.mktemp("conf-adapters")
    for seed, name in enumerate(("alpha", "beta", "gamma", "delta"), start=1):
        save_random_adapter(tiny_neox, root / name, seed=seed)
    return root


@pytest.fixture(scope="session", params=KINDS)
def srv(request, tiny_neox, conformance_adapters, tmp_path_factory):
    """A model dir named ``md-conf`` (served as ``md_conf``) with adapters alpha (seed) and beta, batch_size=1."""
    s = serve(request.param, tiny_neox, conformance_adapters, tmp_path_factory, "md-conf", max_new_tokens=32)
    yield s
    s.stop()


@pytest.fixture(scope="session", params=KINDS)
def batched(request, tiny_neox, conformance_adapters, tmp_path_factory):
    """The same with static batching: batch_size=4, max_batch_delay=1000 ms."""
    s = serve(
        request.param,
        tiny_neox,
        conformance_adapters,
        tmp_path_factory,
        "md-batch",
        max_new_tokens=32,
        batch_size=4,
        max_batch_delay=1000,
    )
    yield s
    s.stop()
