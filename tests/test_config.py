"""Every file in conf/ composes against the schemas; unknown keys and bad values fail with a
message that names the key; `--cfg job` prints the resolved config."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from rl.setup import CONF_DIR

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def options():
    for group in GROUPS:
        for f in sorted((CONF_DIR / group).glob("*.yaml")):
            yield group, f.stem


def make(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def test_groups_are_the_documented_ones():
    assert set(GROUPS) == {"model", "engine", "algo", "reward", "data", "env", "trainer", "logger", "experiment"}


@pytest.mark.parametrize("group,option", list(options()))
def test_every_conf_file_composes(group, option):
    cfg = make([f"{group}={option}"] + (["data.path=x.jsonl"] if group == "data" and option != "synthetic" else []))
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_default_is_the_embedded_run():
    cfg = make()
    assert cfg.model.name_or_path == "smollm2-135m"
    assert cfg.data.name == "synthetic" and cfg.engine.name == "hf"


def test_unknown_key_on_the_command_line_fails_naming_it():
    with pytest.raises(ConfigCompositionException, match="trainer.stpes"):
        make(["trainer.stpes=3"])


def test_wrong_type_fails_naming_it():
    with pytest.raises(ConfigCompositionException, match="trainer.steps"):
        make(["trainer.steps=many"])


def test_unknown_key_in_a_yaml_file_fails_naming_it(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "typo.yaml").write_text("defaults:\n  - _schema\n  - _self_\nlearning_rate: 0.1\n")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        with pytest.raises(ConfigCompositionException, match="learning_rate"):
            compose("config", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "trainer=typo"])


def test_cfg_job_prints_the_resolved_config():
    out = subprocess.run([sys.executable, "-m", "rl.train", "--cfg", "job", "trainer.steps=7"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert "steps: 7" in out.stdout and "name_or_path: smollm2-135m" in out.stdout


def test_stratify_weights_from_the_command_line_and_bad_ones_fail_naming_the_key():
    from rl.setup import check_config

    cfg = make(["data.stratify_weights={irrelevance: 2}"])
    assert dict(cfg.data.stratify_weights) == {"irrelevance": 2}
    check_config(cfg, 1)
    for bad, key in (("{irrelevance: -1}", "data.stratify_weights.irrelevance=-1"),
                     ("{irrelevance: many}", "data.stratify_weights.irrelevance=many")):
        with pytest.raises(ValueError, match=key):
            check_config(make([f"data.stratify_weights={bad}"]), 1)
    # the default is a mapping, so a list fails in Hydra's merge, naming the key; after null, in ours
    with pytest.raises(Exception, match=r"override data.stratify_weights=\[1, 2\]"):
        make(["data.stratify_weights=[1, 2]"])
    with pytest.raises(ValueError, match=r"data.stratify_weights=\[1, 2\]"):
        check_config(make(["experiment=smoke", "data.stratify_weights=[1, 2]"]), 1)
    assert make(["experiment=smoke"]).data.stratify_weights is None  # the tests' runs keep equal shares


def test_adaptive_floor_bad_values_and_a_missing_exact_match_reward_fail_naming_the_key(caplog):
    from rl.setup import check_config

    check_config(make(["data.adaptive_floor=0.5"]), 1)  # the default reward scores tool_n1 at weight 0
    assert "group baseline" not in caplog.text  # the default's batch-whitened advantage
    for algo in (["algo=gspo"], ["algo=reinforce"], ["algo=rloo"]):
        caplog.clear()
        check_config(make([*algo, "data.adaptive_floor=0.5"]), 1)
        assert "(a group baseline)" in caplog.text and "add data.adaptive_floor=null" in caplog.text, algo
    caplog.clear()
    check_config(make(["algo=reinforce", "algo.baseline=batch", "data.adaptive_floor=0.5"]), 1)
    check_config(make(["algo=gspo", "data.adaptive_floor=null"]), 1)
    assert "group baseline" not in caplog.text
    with pytest.raises(ValueError, match=r"data.adaptive_floor=-1.0: use a finite number >= 0"):
        check_config(make(["data.adaptive_floor=-1"]), 1)
    with pytest.raises(Exception, match="data.adaptive_floor"):  # the schema says float: Hydra names the key
        make(["data.adaptive_floor=many"])
    with pytest.raises(ValueError, match=r"reward.exact_match=tool_n1, which is not among reward.functions \['toolrl'\]"):
        check_config(make(["data.adaptive_floor=0.5", "reward.functions=[{name: toolrl}]"]), 1)
    check_config(make(["reward.functions=[{name: toolrl}]", "data.adaptive_floor=null"]), 1)  # fixed shares do not need it
