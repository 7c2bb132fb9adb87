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


def test_pass_and_mean_at_k_by_hand():
    from rl.eval import pass_and_mean_at_k

    # 3 tasks x k=2: task 0 both right, task 1 one right, task 2 none (0.5 partial credit is not a pass)
    exact = [1.0, 1.0, 0.0, 1.0, 0.5, 0.0]
    m = pass_and_mean_at_k(exact, 2)
    assert abs(m["eval/pass@2"] - 2 / 3) < 1e-7
    assert abs(m["eval/mean@2"] - 3.5 / 6) < 1e-7


def test_sampled_eval_and_bfcl_during_training(tiny, monkeypatch):
    import os

    import pytest

    if os.environ.get("TOOLCALL_RL_REQUIRE_BFCL") != "1":
        pytest.importorskip("bfcl_eval")
    from rl.train import train

    cfg = tiny("trainer.eval_k=2", "trainer.eval_bfcl=[simple_python]", "trainer.eval_bfcl_limit=2", "trainer.eval_every=1",
               "trainer.steps=2")
    summary = train(cfg)
    for stage in ("base", "after_rl"):
        assert {"eval/pass@2", "eval/mean@2", "bfcl/simple_python", "bfcl/mean"} <= set(summary[stage])
        assert summary[stage]["eval/pass@2"] >= summary[stage]["eval/mean@2"]
    lines = [json.loads(x) for x in (Path(cfg.trainer.output_dir) / "metrics.jsonl").read_text().splitlines()]
    step1 = next(m for m in lines if m.get("step") == 1 and "time/step_s" in m)
    assert "bfcl/simple_python" in step1 and "reward/total" in step1  # logged apart from the training reward
