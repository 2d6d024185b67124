"""Build DJL Inputs the way the Java side does, and read Outputs back, for in-process tests."""

from __future__ import annotations

import json

from djl_python import Input, Output


def init_input(props: dict) -> Input:
    inp = Input()
    inp.properties = {k: str(v) for k, v in props.items()}
    return inp


def request_input(body, headers: dict | None = None, query: dict | None = None) -> Input:
    inp = Input()
    inp.properties = {"content-type": "application/json", **(headers or {})}
    for k, v in (query or {}).items():
        inp.content.add(k, v.encode())
    raw = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    inp.content.add("data", bytearray(raw))
    return inp


def batch_input(requests: list[Input]) -> Input:
    """DJL's encoding of a static batch: ``batch_size`` plus ``batch_NNN.`` prefixed keys."""
    batch = Input()
    batch.properties = {"batch_size": str(len(requests))}
    for i, req in enumerate(requests):
        prefix = f"batch_{i:03d}."
        for k, v in req.properties.items():
            batch.properties[prefix + k] = v
        for j in range(req.content.size()):
            batch.content.add(prefix + req.content.key_at(j), req.content.value_at(j))
    return batch


def read_output(out: Output, batch_size: int | None = None):
    """(code, body) for a single Output, or a list of bodies for a batch Output."""
    if batch_size is None:
        return out.code, json.loads(bytes(out.content.value_at(0)))
    bodies = [None] * batch_size
    for j in range(out.content.size()):
        key = out.content.key_at(j)
        index = int(key.split(".", 1)[0][len("batch_") :])
        bodies[index] = json.loads(bytes(out.content.value_at(j)))
    return bodies
