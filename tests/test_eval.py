"""The evaluation script writes a table's worth of metrics, eval.json and the raw generations."""

import json
import subprocess
import sys
from pathlib import Path

from rl.eval import split_table


def test_eval_script_on_the_smoke_config(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rl.eval", "experiment=smoke", f"trainer.output_dir={tmp_path}"],
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert {"eval/exact_match", "eval/simple/tool_n1", "eval/irrelevance/tool_n1"} <= set(metrics)
    generations = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert len(generations) == 4 and {"id", "category", "completion", "tool_n1", "reason"} <= set(json.loads(generations[0]))


def test_split_table():
    table = split_table({"eval/tool_n1": 0.5, "eval/exact_match": 0.5, "eval/simple/tool_n1": 1.0, "eval/reason/no_think": 0.2})
    assert table == {"all": {"tool_n1": 0.5}, "simple": {"tool_n1": 1.0}}
