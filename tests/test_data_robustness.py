"""Odd rows and odd files never crash a load far from the bad row: every problem is a
counted skip (or, with data.strict=true, an error) that names the file and its line."""

import json
from pathlib import Path

import pytest

from envs.datasets import clean, read_jsonl

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
GOOD = {"messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "ground_truth": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}


def write(tmp_path, lines: list[str], name="rows.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_a_row_with_u2028_is_one_row(tmp_path):
    row = {**GOOD, "messages": [{"role": "user", "content": "Weather\u2028in\u2029Oslo\x85?"}]}
    path = write(tmp_path, [json.dumps(row, ensure_ascii=False), json.dumps(GOOD)])
    rows = read_jsonl(path)
    assert len(rows) == 2 and rows[0]["messages"][0]["content"] == "Weather\u2028in\u2029Oslo\x85?"
    assert len(clean(rows, path, strict=True)) == 2


def test_a_lone_surrogate_is_a_bad_row_named_by_file_and_line(tmp_path, caplog):
    bad = {**GOOD, "messages": [{"role": "user", "content": "\ud800 Oslo"}]}
    path = write(tmp_path, [json.dumps(GOOD), "", json.dumps(bad)])  # json.dumps escapes it: valid JSON
    assert len(clean(read_jsonl(path), path, strict=False)) == 1
    assert f"{path}:3" in caplog.text and "surrogate" in caplog.text
    with pytest.raises(ValueError, match=rf"{path}:3: key 'messages' holds a lone surrogate"):
        clean(read_jsonl(path), path, strict=True)


def test_errors_name_the_file_line_not_a_row_count(tmp_path):
    path = write(tmp_path, [json.dumps(GOOD), "", "", json.dumps(GOOD), "", '{"messages": [], "tools": []'])
    with pytest.raises(ValueError, match=rf"{path}:6: not JSON"):
        clean(read_jsonl(path), path, strict=True)


def test_latin1_file_fails_naming_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).replace("Oslo", "Troms\xf8").encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8 .* iconv"):
        read_jsonl(str(path))


def test_a_ref_in_a_row_schema_skips_that_row(tmp_path, caplog):
    ref = {**GOOD, "tools": [{"name": "get_weather", "parameters": {"$ref": "#/definitions/nowhere"}}]}
    path = write(tmp_path, [json.dumps(ref), json.dumps(GOOD)])
    assert len(clean(read_jsonl(path), path, strict=False, filter_=True)) == 1
    assert f"{path}:1" in caplog.text
    with pytest.raises(ValueError, match=rf"{path}:1: filtered: the schema of get_weather cannot be used"):
        clean(read_jsonl(path), path, strict=True, filter_=True)


ODD = [  # rows that made converters raise TypeError/AttributeError, and other shapes
    {"query": "q", "tools": "[1]", "answers": "[]"},
    {"query": "q", "tools": "{[1]: 2}", "answers": "[]"},
    {"query": 5, "tools": [None], "answers": {"a": 1}},
    {"conversations": [1, 2, {"from": "gpt", "value": 3}]},
    {"conversations": "not a list"},
    {"system": 7, "conversations": [{"from": "user", "value": None}]},
    {"question": [[{"role": "user", "content": 1}]], "function": [1]},
    {"messages": [{"role": "user", "content": ["a"]}], "tools": [{"name": 1}], "ground_truth": "[1]"},
    [1, 2],
    None,
    "text",
]


@pytest.mark.parametrize("fmt", ["ours", "xlam", "hermes", "toolace", "bfcl"])
def test_odd_rows_are_counted_skips_in_every_format(tmp_path, fmt, caplog):
    good = [json.loads(line) for line in (FIXTURES / f"{fmt}.jsonl").read_text().splitlines() if line.strip()]
    path = write(tmp_path, [json.dumps(r) for r in ODD + good])
    n_good = len(clean(good, fmt, strict=False, fmt=fmt))
    assert len(clean(read_jsonl(path), path, strict=False, fmt=fmt)) == n_good
    assert f"of {len(ODD) + len(good)} rows" in caplog.text and f"{path}:1: " in caplog.text
    with pytest.raises(ValueError, match=rf"{path}:1: "):
        clean(read_jsonl(path), path, strict=True, fmt=fmt)


def test_skipping_most_of_a_file_is_an_error_not_a_log_line(tmp_path):
    from omegaconf import OmegaConf

    from envs.datasets import load_tasks
    from rl.config import DataConfig

    broken = {**GOOD, "ground_truth": [{"name": "get_weather", "arguments": {"city": None}}]}  # fails its schema
    path = write(tmp_path, [json.dumps(GOOD)] * 2 + [json.dumps(broken)] * 4)
    cfg = OmegaConf.structured(DataConfig(name="jsonl", path=path, n_eval=1))
    with pytest.raises(ValueError, match=rf"{path}: 4 of 6 rows were skipped \(4 by the Tool-N1 filter\).*"
                                         r"data.max_skipped_share=0.5.*rows.jsonl:3"):
        load_tasks(cfg)
    cfg.max_skipped_share = 0.9
    train, held_out = load_tasks(cfg)
    assert len(train) + len(held_out) == 2
