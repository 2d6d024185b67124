"""``torch.ops.loraship.row_linear``: the one-row fp32 product of the compiled decode step (kernels/row_linear.cpp).

Built with torch's extension builder at first use, for the running CPU's vector instructions, into torch's
extension cache (``TORCH_EXTENSIONS_DIR``; once per machine, ~30 s); inductor calls it from the compiled graph
like any operator. Where it cannot be built the step keeps ATen's (MKL's) product.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "kernels" / "row_linear.cpp"

# The flags inductor builds its own CPU kernels with, per ATen's detected capability (they pick Vectorized's width).
ISA_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma"],
}


def build(source: Path = SOURCE) -> bool:
    """Build ``source`` (or reuse its build) for this CPU and load it; False, with the reason logged, where it
    cannot be built (no compiler, headers or ninja)."""
    from torch.utils.cpp_extension import load as build_extension

    if shutil.which("ninja") is None:  # e.g. a server's worker started without the venv's bin/ on PATH
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # the builder then says it needs ninja
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        build_extension(
            name=f"loraship_{source.stem}_{capability.lower()}",
            sources=[str(source)],
            extra_cflags=["-O3", "-fopenmp", *ISA_FLAGS.get(capability, [])],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as exc:  # the step keeps ATen's product
        log.warning("could not build the one-row product kernel; the decode step uses ATen's: %s", exc)
        return False
    return True


@functools.cache
def load() -> bool:
    """Whether ``torch.ops.loraship.row_linear`` is there, built and registered (with its shape function for
    tracing) at the first call."""
    if hasattr(torch.ops.loraship, "row_linear"):  # registered by another copy of this module (a model dir's)
        return True
    if not build():
        return False

    @torch.library.register_fake("loraship::row_linear")
    def _(x, weight, bias=None):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    return True
