"""Each public format's loader on a fixture file written in that format: rows convert to
our tasks, the Tool-N1 filter drops gold calls that do not validate, bad rows are counted
(or fail with data.strict=true, naming the file and row)."""

import logging
from pathlib import Path

import pytest

from envs.datasets import clean, load_tasks, read_jsonl
from envs.formats import json_type, normalize_tool, parse_bracket_calls

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def load(fmt, strict=False, filter_=True):
    return clean(read_jsonl(str(FIXTURES / f"{fmt}.jsonl")), fmt, strict, fmt, filter_)


def test_toolace_one_task_per_calling_turn_with_context(caplog):
    with caplog.at_level(logging.WARNING):
        tasks = load("toolace")
    assert [t["ground_truth"] for t in tasks] == [
        [{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}},
         {"name": "convert", "arguments": {"amount": 20.5, "to": "EUR"}}],
        [{"name": "get_weather", "arguments": {"city": "Bergen"}}],
    ]
    second = tasks[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "tool", "assistant", "user"]
    assert tasks[0]["tools"][0]["parameters"]["type"] == "object"  # BFCL-style "dict" normalised
    # row 1 asks for JPY, outside its enum: Tool-N1's filter; row 2's call does not parse
    assert "skipped 2 of 3 rows (1 by the Tool-N1 filter)" in caplog.text and "'JPY' is not one of" in caplog.text


def test_xlam_python_types_become_json_schema():
    (task,) = load("xlam")
    params = task["tools"][0]["parameters"]
    assert params["properties"]["tags"] == {"type": "array", "items": {"type": "string"}, "description": "tags"}
    assert params["properties"]["limit"]["type"] == "integer" and params["required"] == ["query", "tags"]
    assert task["ground_truth"] == [{"name": "search_books", "arguments": {"query": "whales", "limit": 3, "tags": ["sea"]}}]
    assert task["id"] == "1"  # the dataset's own id is kept


def test_hermes_tool_calls_in_json_or_python_literal():
    (task,) = load("hermes")
    assert task["ground_truth"] == [{"name": "get_stock_price", "arguments": {"symbol": "AAPL"}},
                                    {"name": "get_stock_price", "arguments": {"symbol": "MSFT"}}]
    assert task["messages"] == [{"role": "user", "content": "Price of AAPL and MSFT?"}]


def test_bfcl_lines_with_answers_inline():
    simple, irrelevance = load("bfcl")
    assert simple["category"] == "simple_python" and simple["ground_truth"] == [{"name": "area", "arguments": {"w": 3, "h": 4}}]
    assert irrelevance["category"] == "irrelevance" and irrelevance["ground_truth"] == []


def test_ours_and_the_filter_switch():
    assert len(load("ours")) == 1  # the second row's gold call lacks a required argument
    assert len(load("ours", filter_=False)) == 2


@pytest.mark.parametrize("fmt", ["toolace", "xlam", "hermes", "ours"])
def test_strict_fails_naming_file_and_row(fmt):
    with pytest.raises(ValueError, match=rf"{fmt}.jsonl:\d+: .*data.strict=true"):
        load(fmt, strict=True)


def test_load_tasks_from_a_file_in_a_format(tmp_path):
    from omegaconf import OmegaConf

    from rl.config import DataConfig

    cfg = OmegaConf.structured(DataConfig(name="jsonl", path=str(FIXTURES / "toolace.jsonl"), format="toolace", n_eval=1,
                                        max_skipped_share=1.0))  # the fixture skips 2 of its 3 rows on purpose
    train, held_out = load_tasks(cfg)
    assert len(train) == 1 and len(held_out) == 1
    with pytest.raises(ValueError, match="data.format='alpaca'"):
        load_tasks(OmegaConf.structured(DataConfig(name="jsonl", path=str(FIXTURES / "ours.jsonl"), format="alpaca")))


def test_pieces():
    assert json_type("Dict[str, int]") == {"type": "object"} and json_type("weird") == {}
    assert parse_bracket_calls('[f(a=1, b="x"), m.g()]') == [{"name": "f", "arguments": {"a": 1, "b": "x"}},
                                                            {"name": "m.g", "arguments": {}}]
    assert parse_bracket_calls("Sure, here you go") is None and parse_bracket_calls("[f(a=open('x'))]") is None
    tool = normalize_tool({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "float"}, "o": {"type": "dict", "properties": {"k": {"type": "tuple"}}}}}}})
    assert tool["parameters"]["properties"]["o"] == {"type": "object", "properties": {"k": {"type": "array"}}}
