"""``loraship bench``: a load generator for the served handler, with a per-adapter view.

One module per job: ``workload`` (prompts and the adapter mix), ``client`` (one timed request),
``load`` (closed and open loops in threads), ``stats`` (percentiles, throughput, goodput),
``report`` and ``plots`` (bench.json, requests.jsonl, summary.md, PNGs), ``run`` (one run, start
to finish) and ``compare`` (two runs side by side). bench.json's schema: README.md here.
"""

from .run import BenchConfig, BenchError, run_bench

__all__ = ["BenchConfig", "BenchError", "run_bench"]
