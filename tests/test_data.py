"""Loading task rows from files: bad rows are skipped and counted, or fail naming the row."""

import json

import pytest
from omegaconf import OmegaConf

from envs.datasets import load_tasks

GOOD = {"messages": [{"role": "user", "content": "Timer 5 min"}],
        "tools": [{"name": "set_timer", "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}}}],
        "ground_truth": [{"name": "set_timer", "arguments": {"minutes": 5}}]}


def cfg(path, **kw):
    from rl.config import DataConfig

    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "jsonl", "path": str(path), "n_eval": 1, **kw})


def write(tmp_path, rows):
    f = tmp_path / "tasks.jsonl"
    f.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return f


def test_good_rows_load_and_split(tmp_path):
    f = write(tmp_path, [GOOD] * 5 + [{**GOOD, "ground_truth": json.dumps(GOOD["ground_truth"])}])
    train, held_out = load_tasks(cfg(f))
    assert len(train) == 5 and len(held_out) == 1
    assert train[0]["ground_truth"] == GOOD["ground_truth"]


def test_bad_rows_are_skipped_with_a_warning(tmp_path, caplog):
    bad_call = {**GOOD, "ground_truth": [{"name": "other_tool", "arguments": {}}]}
    f = write(tmp_path, [GOOD, GOOD, "{not json", {"messages": []}, bad_call, GOOD])
    train, held_out = load_tasks(cfg(f))
    assert len(train) + len(held_out) == 3
    assert "skipped 3 of 6 rows" in caplog.text


@pytest.mark.parametrize("row,message", [
    ({"tools": [], "ground_truth": []}, r"jsonl:2: missing key\(s\) \['messages'\]"),
    ({**GOOD, "ground_truth": [{"name": "nope", "arguments": {}}]}, r"jsonl:2: ground_truth calls \['nope'\]"),
    ({**GOOD, "tools": "[1]"}, "jsonl:2: key 'tools' must be a list"),
    ({**GOOD, "ground_truth": "[{"}, "jsonl:2: ground_truth .* fix the dataset row"),
])
def test_strict_fails_naming_file_row_and_key(tmp_path, row, message):
    f = write(tmp_path, [GOOD, row, GOOD])
    with pytest.raises(ValueError, match=message) as err:
        load_tasks(cfg(f, strict=True))
    assert str(f) in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_tasks(cfg(tmp_path / "nowhere.jsonl"))
