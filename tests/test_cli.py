"""The `toolcall-rl` command: subcommands for train, eval, score, export and bench; the
working directory goes last on sys.path, so a user's `rewards.py` there does not shadow our
package while the user's own modules stay importable for `_target_`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USER_REWARD = "def brevity(completions, **kwargs):\n    return [1.0 / (1 + len(c)) for c in completions]\n"


def cli(*args, cwd=ROOT):
    """The installed console script where there is one (CI installs the package), else the module."""
    script = shutil.which("toolcall-rl")
    argv = [script] if script else [sys.executable, "-c", "import sys; from rl.cli import main; sys.exit(main())"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if not script else dict(os.environ)
    return subprocess.run([*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_usage_lists_the_subcommands():
    out = cli()
    assert out.returncode == 2
    assert all(f"toolcall-rl {c}" in out.stderr for c in ("train", "eval", "score", "export", "bench"))


def test_bench_names_what_exists():
    out = cli("bench", "nothing_like_this")
    assert out.returncode == 2 and "lora_sync" in out.stderr


@pytest.mark.parametrize("command", ["score", "export"])
def test_argparse_subcommands_answer_help(command):
    out = cli(command, "--help")
    assert out.returncode == 0 and "usage" in out.stdout


def test_train_from_a_folder_with_a_users_rewards_py(tmp_path):
    """A TRL user's layout: rewards.py beside the command. It neither breaks our imports nor is
    lost: its functions are reachable by `_target_`."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "rewards.py").write_text(USER_REWARD)
    if shutil.which("toolcall-rl") is None:  # python -c puts the working directory first
        pytest.skip("needs the installed console script (pip install -e .)")
    out = cli("train", "experiment=smoke", f"trainer.output_dir={tmp_path / 'run'}",
              "reward.functions=[{_target_: rewards.brevity, weight: 1.0}]", cwd=work)
    assert out.returncode != 0 and "rewards.brevity" in out.stderr  # ours, not theirs: it has no brevity
    (work / "rewards.py").rename(work / "my_rewards.py")
    out = cli("train", "experiment=smoke", f"trainer.output_dir={tmp_path / 'run'}",
              "reward.functions=[{_target_: my_rewards.brevity, weight: 1.0}]", cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/brevity" in r for r in steps)
