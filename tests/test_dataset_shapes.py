"""Every shape a task dataset comes in loads without loss: native nested columns that Arrow
unified (parquet, save_to_disk, what push_to_hub stores), TRL's `prompt` rows, tools in
OpenAI's shape, OpenAI/TRL SFT rows with assistant `tool_calls`, and our own to_trl export
read back. "Without loss": as many tasks as rows (strict, with Tool-N1's filter on), the same
tasks as from the plain Python rows, and every original gold answer scores 1.0 against the
loaded ground truth."""

import json
from pathlib import Path

import datasets
import pytest
from omegaconf import OmegaConf

from envs import synthetic
from envs.datasets import ArrowRows, Lines, clean, load_tasks, read_hub, read_jsonl, to_trl
from envs.single_turn import TOOL_N1_SYSTEM, SingleTurnEnv, gold_answer
from rewards.schema import schema_validity_reward
from rewards.tool_n1 import tool_n1_reward

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
KEYS = ("id", "category", "messages", "tools", "ground_truth")


def obj(props: dict, required=()) -> dict:
    return {"type": "object", "properties": props, "required": list(required)}


WEATHER = {"name": "get_weather", "description": "Weather for a city", "parameters": obj(
    {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"])}
TIMER = {"name": "set_timer", "description": "Start a timer", "parameters": obj({"amount": {"type": "integer"}}, ["amount"])}
CONVERT = {"name": "convert", "description": "Convert money", "parameters": obj(
    {"amount": {"type": "number"}, "to": {"type": "string"}}, ["amount", "to"])}
SEARCH = {"name": "search", "description": "Search", "parameters": obj(
    {"query": {"type": "string"}, "filters": obj({"lang": {"type": "string"}, "year": {"type": "integer"}})}, ["query"])}
NOTE = {"name": "add_note", "description": "Add a note", "parameters": obj(
    {"title": {"type": "string"}, "body": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, ["title", "body"])}


def openai_tool(tool: dict) -> dict:
    return {"type": "function", "function": tool}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# Heterogeneous on purpose: through Arrow, every tool's properties gain the others' names,
# every call's arguments the others' keys (None), set_timer's integer `amount` shares a column
# with convert's 2.5 (so it reads back as 5.0), and one explicit null is real. (Dataset.from_list
# takes its columns from the first row, which therefore has a category.)
ROWS = [
    {"id": "a", "category": "simple", "messages": user("Weather in Oslo?"), "tools": [WEATHER, TIMER],
     "ground_truth": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
    {"id": "b", "category": "simple", "messages": [{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "Bergen, celsius", "name": "alice"}],
     "tools": [WEATHER], "ground_truth": [{"name": "get_weather", "arguments": {"city": "Bergen", "unit": "celsius"}}]},
    {"id": "c", "category": "parallel", "messages": user("5 minute timer, and 2.5 USD in EUR"), "tools": [TIMER, CONVERT],
     "ground_truth": [{"name": "set_timer", "arguments": {"amount": 5}},
                      {"name": "convert", "arguments": {"amount": 2.5, "to": "EUR"}}]},
    {"id": "d", "messages": user("Whales, in English"), "tools": [SEARCH],
     "ground_truth": [{"name": "search", "arguments": {"query": "whales", "filters": {"lang": "en"}}}]},
    {"id": "e", "messages": user("Whales from 2020"), "tools": [openai_tool(SEARCH), openai_tool(WEATHER)],
     "ground_truth": [{"name": "search", "arguments": {"query": "whales", "filters": {"year": 2020}}}]},
    {"id": "f", "messages": user("Note 'milk', no body"), "tools": [NOTE],
     "ground_truth": [{"name": "add_note", "arguments": {"title": "milk", "body": None}}]},
    {"id": "g", "category": "irrelevance", "messages": user("Tell me a joke"), "tools": [TIMER], "ground_truth": []},
]


def plain(task: dict) -> dict:
    return {k: task[k] for k in KEYS}


def expected(rows: list[dict], fmt: str = "ours") -> list[dict]:
    """What the plain Python rows load as (no Arrow involved)."""
    return [plain(t) for t in clean(rows, "rows", True, fmt, True)]


def load(rows_or_path, fmt: str = "ours") -> list[dict]:
    rows = read_hub(str(rows_or_path), "train") if isinstance(rows_or_path, (str, Path)) else rows_or_path
    return [plain(t) for t in clean(rows, "rows", True, fmt, True)]  # the same source name: the same ids


def assert_gold_scores_one(originals: list[dict], loaded: list[dict]) -> None:
    scores = tool_n1_reward([gold_answer(t) for t in originals], [t["ground_truth"] for t in loaded])
    assert list(scores) == [1.0] * len(originals)


def has_none(value) -> bool:
    if isinstance(value, dict):
        return any(v is None or has_none(v) for v in value.values())
    return isinstance(value, list) and any(has_none(v) for v in value)


def data_cfg(path, **kw):
    from rl.config import DataConfig

    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "hub", "path": str(path), "n_eval": 1, **kw})


# --- native nested columns, unified by Arrow --------------------------------------------------
def test_parquet_with_native_nested_columns_loads_without_loss(tmp_path):
    path = tmp_path / "tasks.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    raw = read_hub(str(path), "train")
    assert isinstance(raw, ArrowRows) and {"messages", "tools", "ground_truth"} <= raw.nested
    assert has_none(raw[0]["tools"]) and has_none(raw[0]["ground_truth"])  # the unification this undoes
    assert raw[2]["ground_truth"][0]["arguments"]["amount"] == 5.0  # widened to float by Arrow

    loaded = load(path)
    assert loaded == expected(ROWS)  # same tasks, in order: nothing dropped, nothing gained
    c, f = loaded[2]["ground_truth"], loaded[5]["ground_truth"]
    assert c[0]["arguments"] == {"amount": 5} and type(c[0]["arguments"]["amount"]) is int
    assert f == [{"name": "add_note", "arguments": {"title": "milk", "body": None}}]  # nullable: the null is kept
    assert loaded[4]["tools"] == [SEARCH, WEATHER]  # OpenAI shape -> plain
    assert_gold_scores_one(ROWS, loaded)

    train, held_out = load_tasks(data_cfg(path))  # the config route: data=hub data.path=<file>
    assert len(train) + len(held_out) == len(ROWS)


def test_synthetic_typed_tools_round_trip_through_parquet(tmp_path):
    """Nested objects, arrays, floats, bools and optional arguments over many tools."""
    rows = synthetic.generate(100, 3, ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance"],
                              typed_tools=True)
    path = tmp_path / "synthetic.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    loaded = load(path)
    assert loaded == expected(rows)
    assert_gold_scores_one(rows, loaded)


@pytest.mark.parametrize("kind", ["dataset", "dataset_dict"])
def test_save_to_disk_folder_loads_without_loss(tmp_path, kind):
    folder = tmp_path / "saved"
    ds = datasets.Dataset.from_list(ROWS)
    (datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}) if kind == "dataset_dict" else ds).save_to_disk(str(folder))
    loaded = load(folder)
    assert loaded == expected(ROWS)
    assert_gold_scores_one(ROWS, loaded)
    train, held_out = load_tasks(data_cfg(folder))
    assert len(train) + len(held_out) == len(ROWS)
    if kind == "dataset_dict":
        assert len(read_hub(str(folder), "test")) == 2
        with pytest.raises(ValueError, match=r"without split 'validation' \(data.split\); it has \['test', 'train'\]"):
            read_hub(str(folder), "validation")


def test_string_columns_are_read_exactly(tmp_path):
    """JSON-string tools/ground_truth are not unified by Arrow, so nothing is pruned from them:
    a nullable argument one call omits stays omitted, another call's null stays null."""
    rows = [{"messages": user("a"), "tools": json.dumps([NOTE]),
             "ground_truth": json.dumps([{"name": "add_note", "arguments": {"title": "x", "body": None}}])},
            {"messages": user("b"), "tools": json.dumps([openai_tool(NOTE)]),
             "ground_truth": json.dumps([{"name": "add_note", "arguments": {"title": "y", "body": "z"}}])}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "s"))
    raw = read_hub(str(tmp_path / "s"), "train")
    assert raw.nested == {"messages"}
    assert load(raw) == expected(rows)


def test_null_rule_drops_nulls_the_schema_does_not_admit():
    rows = ArrowRows([{"messages": user("q"), "tools": [NOTE, WEATHER], "ground_truth": [
        {"name": "get_weather", "arguments": {"city": "Oslo", "unit": None, "title": None}},
        {"name": "add_note", "arguments": {"title": "t", "body": None, "city": None}}]}], {"tools", "ground_truth"})
    (task,) = load(rows)
    assert task["ground_truth"] == [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                                    {"name": "add_note", "arguments": {"title": "t", "body": None}}]


# --- TRL prompt rows, OpenAI tools, OpenAI tool_calls ----------------------------------------
def test_trl_prompt_rows(tmp_path):
    rows = [{"prompt": r["messages"], **{k: v for k, v in r.items() if k != "messages"}} for r in ROWS]
    want = expected(ROWS)
    assert expected(rows) == want
    path = tmp_path / "prompt.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    assert load(path) == want
    (task,) = expected([{"prompt": "Weather in Oslo?", "tools": [WEATHER], "ground_truth": ROWS[0]["ground_truth"]}])
    assert task["messages"] == user("Weather in Oslo?")  # a standard (string) prompt is one user turn


def test_openai_tool_shape_in_every_source(tmp_path):
    rows = [{**r, "tools": [openai_tool(t) if "name" in t else t for t in r["tools"]]} for r in ROWS]
    want = expected(ROWS)
    f = tmp_path / "openai_tools.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load(read_jsonl(str(f))) == want
    assert load(read_hub(str(f), "train")) == want  # data=hub with a .jsonl path reads it line by line
    assert isinstance(read_hub(str(f), "train"), Lines)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "d"))
    assert load(tmp_path / "d") == want
    as_text = [{**r, "tools": json.dumps(r["tools"])} for r in rows]
    assert expected(as_text) == want


def openai_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "openai.jsonl").read_text().splitlines() if line.strip()]


def test_openai_tool_calls_become_tasks():
    rows = openai_rows()
    tasks = clean(rows[:2], "sft", True, "openai", True)
    assert [t["ground_truth"] for t in tasks] == [
        [{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}],
        [{"name": "get_weather", "arguments": {"city": "Bergen"}}, {"name": "convert", "arguments": {"amount": 20.5, "to": "EUR"}}],
        [{"name": "convert", "arguments": {"amount": 3, "to": "NOK"}}],
    ]
    first, second, trl = tasks
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert second["messages"][2]["content"] == (  # an earlier call stays in the context, in the answer format
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}]</tool_call>')
    assert first["tools"][0] == WEATHER and trl["id"] == "trl-7" and [first["id"], second["id"]] == ["sft:0:0", "sft:0:1"]
    assert_gold_scores_one(tasks, tasks)
    assert clean(rows[:2], "sft", True, "ours", True) == tasks  # detected in `ours` rows without ground_truth
    assert len(clean(rows, "sft", False, "openai", True, 1.0)) == 3  # no calls; arguments not JSON: skipped
    with pytest.raises(ValueError, match="sft row 2: no assistant turn with tool_calls"):
        clean(rows, "sft", True, "openai", True)


def test_openai_tool_calls_through_arrow(tmp_path):
    """Arguments as objects (transformers' convention) are unified across calls by Arrow."""
    rows = openai_rows()[:2]
    for row in rows:
        row["tools"] = json.loads(row["tools"]) if isinstance(row["tools"], str) else row["tools"]
        for m in row.get("messages", []) + row.get("completion", []):
            for call in m.get("tool_calls") or []:
                args = call["function"]["arguments"]
                call["function"]["arguments"] = json.loads(args) if isinstance(args, str) else args
    want = expected(rows, "openai")
    assert len(want) == 3
    columns = sorted({k for row in rows for k in row})  # as on the hub: every row has every column
    datasets.Dataset.from_list([{k: row.get(k) for k in columns} for row in rows]).save_to_disk(str(tmp_path / "sft"))
    raw = read_hub(str(tmp_path / "sft"), "train")
    assert has_none(raw[0]["messages"])
    assert load(raw, "openai") == load(raw, "ours") == want


# --- our tasks out to TRL and back -----------------------------------------------------------
def test_to_trl_round_trip(tmp_path):
    tasks = (clean(ROWS, "hand", True) + clean(openai_rows()[:2], "sft", True, "openai")
             + clean(synthetic.generate(40, 5, typed_tools=True), "syn", True))
    ds = to_trl(tasks)
    assert ds.column_names == ["prompt", "tools", "ground_truth", "id", "category"]
    assert isinstance(ds[0]["tools"], str) and isinstance(ds[0]["ground_truth"], str)
    assert json.loads(ds[0]["tools"])[0] == {"type": "function", "function": WEATHER}
    want = [plain(t) for t in tasks]
    ds.save_to_disk(str(tmp_path / "trl"))
    assert load(tmp_path / "trl") == want
    ds.to_parquet(str(tmp_path / "trl.parquet"))
    assert load(tmp_path / "trl.parquet") == want

    # TRL's GRPOTrainer hands these columns to the rewards as they are; completions are conversational
    completions = [[{"role": "assistant", "content": gold_answer(t)}] for t in tasks]
    assert list(tool_n1_reward(completions, ground_truth=ds["ground_truth"], tools=ds["tools"], id=ds["id"])) == [1.0] * len(tasks)
    assert list(schema_validity_reward(completions, tools=ds["tools"], ground_truth=ds["ground_truth"])) == [1.0] * len(tasks)


def test_to_trl_with_the_system_prompt_renders_what_our_env_renders(tmp_path):
    tasks = clean(ROWS, "hand", True)
    ds = to_trl(tasks, TOOL_N1_SYSTEM)
    env = SingleTurnEnv(None)
    prompts = [[{k: v for k, v in m.items() if v is not None} for m in p] for p in ds["prompt"]]  # Arrow's None keys
    assert prompts == [env.reset(t) for t in tasks]
    assert prompts[1][0]["role"] == "system" and "set_timer" not in prompts[1][0]["content"]  # the row's own tools
    ds.save_to_disk(str(tmp_path / "trl"))
    back = load(tmp_path / "trl")
    assert [(t["tools"], t["ground_truth"]) for t in back] == [(t["tools"], t["ground_truth"]) for t in tasks]


def test_read_hub_refuses_unknown_or_missing_files(tmp_path):
    f = tmp_path / "tasks.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"tasks.txt: a data file must be .jsonl, .parquet, .json, .csv, .arrow"):
        read_hub(str(f), "train")
    with pytest.raises(FileNotFoundError, match=r"nowhere.parquet: no such file"):  # not looked up on the hub
        load_tasks(data_cfg(tmp_path / "nowhere.parquet"))
    with pytest.raises(ValueError, match="to_trl: no tasks"):
        to_trl([])


def test_openai_history_writes_parallel_calls_as_gold_answers_do():
    from envs.formats import from_openai
    from envs.single_turn import calls_json

    calls = [{"name": "get_weather", "arguments": {"city": c}} for c in ("Oslo", "Lima")]
    turn = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in calls]}
    row = {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Oslo and Lima?"}, turn,
        {"role": "tool", "content": "4 C"}, {"role": "tool", "content": "19 C"},
        {"role": "user", "content": "And Oslo again?"},
        {"role": "assistant", "content": "", "tool_calls": [turn["tool_calls"][0]]}]}
    first, second = from_openai(row)
    assert first["ground_truth"] == calls
    assert second["messages"][1]["content"] == f"<tool_call>{calls_json(calls)}</tool_call>"
    assert '"}} , {"' in second["messages"][1]["content"]
