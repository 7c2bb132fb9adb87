"""Shared fixtures: configs composed from conf/ for a tiny random model that runs in seconds."""

import pytest
from hydra import compose, initialize_config_dir

from rl import config as _schemas  # noqa: F401  registers the config schemas
from rl.setup import CONF_DIR


def tiny_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=["experiment=smoke", f"trainer.output_dir={tmp_path}", *overrides])


@pytest.fixture
def tiny(tmp_path):
    return lambda *overrides: tiny_cfg(tmp_path, *overrides)
