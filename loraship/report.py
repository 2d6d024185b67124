"""``runs/<timestamp>/report.md``: every figure of a demo run, the verdict, and how to repeat it."""

from __future__ import annotations

import time
from pathlib import Path


def _f(x, spec=".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ci(ci) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]" if ci else "n/a"


def _line(text) -> str:
    """Generated text on one markdown line (a model's own '### ' lines would become headings)."""
    return " ".join(str(text or "").split())


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(run_dir))
    except ValueError:
        return str(path)


def demo_report(demo, seconds: float, failed: str | None = None) -> str:
    fig, run_dir = demo.figures, demo.run_dir
    gate = fig.get("gate") or {}
    lines = [f"# loraship demo: {time.strftime('%Y-%m-%d %H:%M')}", ""]
    if failed:
        lines += [f"**Stopped: {failed}**", ""]
    else:
        verdict = gate.get("verdict", "n/a").upper()
        lines += [f"**Gate verdict: {verdict}** in {seconds:.0f} s end to end.", ""]

    lines += ["## Steps", "", "| step | seconds | |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {secs:.0f} | {note} |" for name, secs, note in demo.timings]

    train = fig.get("train")
    if train:
        res, data = train.get("results", {}), train.get("data", {})
        lines += [
            "",
            "## Training",
            "",
            f"- base model: `{train.get('base_model', {}).get('path')}`",
            f"- data: {data.get('rows')} rows, {data.get('train_rows')} train / {data.get('test_rows')} held out "
            f"({data.get('dropped_too_long', 0)} dropped as longer than max_length)",
            f"- held-out loss: base {_f(res.get('eval_loss_base'))} -> adapter {_f(res.get('eval_loss'))}",
            f"- {res.get('train_tokens')} tokens in {_f(res.get('train_time_s'), '.0f')} s "
            f"({_f(res.get('train_tokens_per_s'), '.1f')} tokens/s), peak RSS {_f(res.get('peak_rss_mb'), '.0f')} MB",
        ]
        if train.get("loss_curve"):
            lines.append(f"- loss curve: `{train.get('loss_curve')}` in the training output")

    ev = fig.get("eval")
    if ev:
        lines += [
            "",
            "## Evaluation (base vs adapter, paired bootstrap 95% CI of the delta)",
            "",
            "| metric | n | base | adapter | delta | CI | better / worse |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for metric, m in ev.get("metrics", {}).items():
            for _name, a in (m.get("adapters") or {}).items():
                lines.append(
                    f"| {metric} | {a.get('n')} | {_f(m.get('base'))} | {_f(a.get('value'))} | "
                    f"{_f(a.get('delta'), '+.3f')} | {_ci(a.get('ci'))} | {a.get('better')} / {a.get('worse')} |"
                )

    smoke = fig.get("smoke")
    if smoke:
        lines += ["", "## Smoke: held-out questions through DJL", ""]
        for s in smoke:
            base, ad = s.get("__base__", {}), s.get("faq", {})
            lines += [
                f"**Q: {s['question']}**",
                "",
                f"- base ({_f(base.get('seconds'), '.1f')} s, {base.get('finish_reason')}): {_line(base.get('text'))}",
                f"- adapter ({_f(ad.get('seconds'), '.1f')} s, {ad.get('finish_reason')}): {_line(ad.get('text'))}",
                f"- reference: {s.get('reference')}",
                "",
            ]
        differ = sum(s.get("__base__", {}).get("text") != s.get("faq", {}).get("text") for s in smoke)
        lines.append(f"The adapter's answer differs from the base model's on {differ} of {len(smoke)} questions.")

    bench = fig.get("bench")
    if bench:
        lines += [
            "",
            "## Benchmark (closed loop, continuous batching, streamed)",
            "",
            "| level | variant | ok | output tok/s | e2e p50 s | e2e p99 s |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for level in bench.get("levels", []):
            label = level.get("label")
            lines.append(
                f"| {label} | all | {level.get('ok')} | {_f(level.get('output_tokens_per_s'), '.1f')} | "
                f"{_f(((level.get('latency') or {}).get('e2e_s') or {}).get('p50'))} | "
                f"{_f(((level.get('latency') or {}).get('e2e_s') or {}).get('p99'))} |"
            )
            for name, st in (level.get("adapters") or {}).items():
                e2e = ((st or {}).get("latency") or {}).get("e2e_s") or {}
                lines.append(f"| {label} | {name} | {st.get('ok')} | | {_f(e2e.get('p50'))} | {_f(e2e.get('p99'))} |")
        plots = sorted((run_dir / "bench").glob("*.png"))
        if plots:
            lines += [""] + [f"![{p.stem}]({_rel(p, run_dir)})" for p in plots]

    if gate:
        lines += [
            "",
            f"## Gate: {gate.get('verdict', 'n/a')}",
            "",
            "| adapter | check | value | threshold | result | reason |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in gate.get("checks", []):
            lines.append(
                f"| {c.get('adapter')} | {' '.join(filter(None, (c.get('metric'), c.get('check'))))} | "
                f"{c.get('value')} | {c.get('threshold')} | {c.get('status')} | {c.get('reason')} |"
            )
        lines.append(f"\nFull report: `{_rel(run_dir / 'gate' / 'gate.md', run_dir)}`")
    if "rollout_refused" in fig:
        lines += [
            "",
            "## Rollout (dry run)",
            "",
            "Refused, as it must be without a passing gate report."
            if fig["rollout_refused"]
            else "Planned: see `logs/rollout.log` for the JSON plan (no AWS call was made).",
        ]

    lines += ["", "## Repeat each step", "", "```bash"] + [cmd for _, cmd in demo.commands] + ["```", ""]
    return "\n".join(lines)
