"""The demo's report and step plumbing (the full lifecycle runs in `make demo`, not in tests)."""

import pytest

from loraship.demo import Demo, StepFailed
from loraship.report import demo_report


def test_failed_step_names_itself_and_report_says_where_it_stopped(tmp_path, monkeypatch):
    demo = Demo(tmp_path, 0, 3)
    with pytest.raises(StepFailed, match="step 'build' failed: `loraship build` exited with 2"):
        with demo.step("4/9 build"):
            demo.run("build", ["build", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "md")])
    assert (tmp_path / "logs" / "build.log").read_text().strip()  # the command's own error is kept
    report = demo_report(demo, 1.0, failed="step 'build' failed: ...")
    assert "**Stopped: step 'build' failed" in report
    assert "| 4/9 build |" in report and "failed |" in report
    assert "loraship build --model" in report  # the exact command to repeat it


def test_report_renders_eval_smoke_and_gate(tmp_path):
    demo = Demo(tmp_path, 0, 1)
    demo.figures = {
        "eval": {
            "metrics": {
                "reference_loss": {
                    "base": 2.9,
                    "adapters": {
                        "faq": {"value": 2.5, "delta": -0.4, "ci": [-0.5, -0.3], "n": 14, "better": 14, "worse": 0}
                    },
                }
            }
        },
        "smoke": [
            {
                "question": "Q?",
                "reference": "R",
                "__base__": {"text": "a\n### Explanation:\nb", "seconds": 1.0},
                "faq": {"text": "c", "seconds": 0.5, "finish_reason": "stop"},
            }
        ],
        "gate": {
            "verdict": "fail",
            "checks": [
                {
                    "adapter": "faq",
                    "metric": "reference_loss",
                    "check": "min_gain",
                    "status": "fail",
                    "threshold": 0.02,
                    "value": 0.01,
                    "reason": "too small",
                }
            ],
        },
        "rollout_refused": True,
    }
    report = demo_report(demo, 5.0)
    assert "**Gate verdict: FAIL**" in report
    assert "| reference_loss | 14 | 2.900 | 2.500 | -0.400 | [-0.500, -0.300] | 14 / 0 |" in report
    assert "a ### Explanation: b" in report  # generated text stays on one line
    assert "differs from the base model's on 1 of 1" in report
    assert "| faq | reference_loss min_gain | 0.01 | 0.02 | fail | too small |" in report
    assert "Refused, as it must be" in report


def test_any_error_inside_a_step_stops_the_run_under_its_name(tmp_path):
    demo = Demo(tmp_path, 0, 3)
    with pytest.raises(StepFailed, match="step '5/9 smoke' failed: KeyError: 'generated_text'"):
        with demo.step("5/9 smoke"):
            {}["generated_text"]


def test_runs_land_under_the_current_directory(tmp_path, monkeypatch):
    """Not beside the code: an installed (non-editable) loraship must not write into site-packages."""
    import loraship.demo

    def stop_at_once(self):
        with self.step("1/9 prepare"):
            raise RuntimeError("stopped by the test")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loraship.demo.Demo, "main", stop_at_once)
    assert loraship.demo.run_demo() == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "report.md").is_file()
