"""The README's first command, for real: the embedded default learns on this CPU in
minutes. Slow (~11 minutes on 2 cores): run with `pytest -m slow`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_embedded_default_learns_in_under_15_minutes(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "rl.train", f"trainer.output_dir={out}", "logger.console=false"],
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    base, final = summary["base"]["eval/exact_match"], summary["after_rl"]["eval/exact_match"]
    assert final >= base + 0.15, summary
    assert summary["wall_s"] < 900, summary["time_s"]
