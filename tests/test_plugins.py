"""A third-party package registers a reward and a tool by entry points; after installing it,
`reward=<its name>` trains with it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PLUGIN = Path(__file__).parent / "fixtures" / "reward_plugin"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(PLUGIN)], check=True, capture_output=True, timeout=300)
    return target


def run(code_or_args, plugin_path, module=False):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), str(ROOT)])}
    argv = [sys.executable, *(["-m", *code_or_args] if module else ["-c", code_or_args])]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_trains_with_the_plugin_reward_by_name(plugin_path, tmp_path):
    out = run(["rl.train", "experiment=smoke", "reward=demo_brevity", f"trainer.output_dir={tmp_path}"], plugin_path,
              module=True)
    assert out.returncode == 0, out.stderr[-2000:]
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["reward/demo_brevity"] <= 1 for r in steps if "loss" in r)


def test_plugin_tool_is_found_by_name(plugin_path):
    out = run("from tools.registry import get_tool; from tools.sandbox import run_call; "
              "print(run_call(get_tool('demo_echo'), {'text': 'hi'}).content)", plugin_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "hi"


@pytest.mark.parametrize("module", ["rewards.py", "tools.py"])
def test_a_local_module_shadowing_our_packages_is_named_with_the_fix(tmp_path, module):
    (tmp_path / module).write_text("def my_reward(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "rl.train", "--help"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    name = module.removesuffix(".py")
    assert f"{tmp_path / module} shadows toolcall-rl's `{name}` package" in out.stderr and f"my_{name}.py" in out.stderr
