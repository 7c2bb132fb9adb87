"""Tools: schema from a typed function, built-ins, and the sandbox: an infinite loop stops
at the time limit, a memory bomb at the cap, an error becomes a message; none stops the run."""

import pytest

from tools.builtin import KeyValueStore
from tools.registry import Tool, get_tool
from tools.sandbox import run_call, run_named


def forecast(city: str, days: int = 3, unit: str = "celsius") -> str:
    """Weather forecast.

    Args:
        city: City name.
        days: How many days ahead.
        unit: Temperature unit.
    """
    return f"{city}: sunny for {days} days"


def spin(n: int) -> int:
    """Loop forever.

    Args:
        n: Ignored.
    """
    while True:
        n += 1


def hog(megabytes: int) -> int:
    """Allocate memory.

    Args:
        megabytes: How much.
    """
    block = bytearray(megabytes * 2**20)
    return len(block)


def boom(x: int) -> int:
    """Raise.

    Args:
        x: Ignored.
    """
    raise RuntimeError("the tool broke")


def test_schema_from_signature_and_docstring():
    spec = Tool.from_function(forecast).spec
    assert spec["name"] == "forecast" and spec["description"] == "Weather forecast."
    assert spec["parameters"]["properties"]["days"] == {"type": "integer", "description": "How many days ahead."}
    assert spec["parameters"]["required"] == ["city"]


def test_untyped_function_is_refused_with_how_to_fix():
    def bad(x):
        """No types."""

    with pytest.raises(ValueError, match="type hint"):
        Tool.from_function(bad)


def test_valid_call_runs():
    assert run_call(Tool.from_function(forecast), {"city": "Oslo", "days": 2}).content == "Oslo: sunny for 2 days"


@pytest.mark.parametrize("args,message", [
    ({"days": 2}, "'city' is a required property"),
    ({"city": "Oslo", "days": "two"}, "days: 'two' is not of type 'integer'"),
])
def test_invalid_arguments_become_a_message(args, message):
    result = run_call(Tool.from_function(forecast), args)
    assert not result.ok and result.error == "invalid_arguments" and message in result.content


def test_infinite_loop_stops_at_the_time_limit():
    result = run_call(Tool.from_function(spin), {"n": 0}, timeout_s=1.0)
    assert result.error == "timeout" and "within 1 s" in result.content


def test_memory_bomb_stops_at_the_cap():
    result = run_call(Tool.from_function(hog), {"megabytes": 4096}, memory_mb=256)
    assert result.error == "memory" and "256 MB" in result.content
    assert run_call(Tool.from_function(hog), {"megabytes": 16}, memory_mb=256).content == str(16 * 2**20)


def test_exception_becomes_a_message():
    result = run_call(Tool.from_function(boom), {"x": 1})
    assert result.error == "exception" and "RuntimeError: the tool broke" in result.content


def test_unknown_tool_is_a_message():
    (result,) = run_named([{"name": "nope", "arguments": {}}], {"forecast": Tool.from_function(forecast)})
    assert result.error == "unknown_tool" and "forecast" in result.content


@pytest.mark.parametrize("expression,value", [("2 * (3 + 4)", "14"), ("sqrt(16) + 2 ** 3", "12.0"), ("-7 // 2", "-4")])
def test_calculator(expression, value):
    assert run_call(get_tool("calculate"), {"expression": expression}).content == value


@pytest.mark.parametrize("expression", ["__import__('os').system('true')", "(1).__class__", "[x for x in (1,)]", "9 ** 99999"])
def test_calculator_refuses_anything_but_arithmetic(expression):
    assert run_call(get_tool("calculate"), {"expression": expression}).error == "exception"


def test_units_and_dates():
    assert run_call(get_tool("convert_units"), {"value": 1, "from_unit": "mi", "to_unit": "km"}).content == "1.609344"
    assert run_call(get_tool("convert_units"), {"value": 100, "from_unit": "C", "to_unit": "F"}).content == "212.0"
    assert run_call(get_tool("convert_units"), {"value": 1, "from_unit": "kg", "to_unit": "m"}).error == "exception"
    assert run_call(get_tool("add_days"), {"start": "2028-02-28", "days": 1}).content == "2028-02-29"
    assert run_call(get_tool("days_between"), {"start": "2026-01-01", "end": "2026-03-01"}).content == "59"


def test_key_value_store_keeps_state_per_episode():
    tools = {t.name: t for t in KeyValueStore().tools()}
    assert run_call(tools["kv_set"], {"key": "k", "value": "v"}).ok
    assert run_call(tools["kv_get"], {"key": "k"}).content == "v"
    assert "no value stored" in run_call(tools["kv_get"], {"key": "other"}).content
    fresh = {t.name: t for t in KeyValueStore().tools()}
    assert not run_call(fresh["kv_get"], {"key": "k"}).ok


def test_a_tool_with_an_invalid_schema_is_a_message():
    broken = Tool(fn=forecast, schema={"type": "function", "function": {
        "name": "broken", "description": "", "parameters": {"type": "object", "properties": {"city": {"type": 5}}}}})
    result = run_call(broken, {"city": "Oslo"})
    assert result.error == "invalid_arguments" and "schema of broken is invalid" in result.content


def _tool_with(parameters: dict) -> Tool:
    return Tool(fn=forecast, schema={"type": "function", "function": {
        "name": "forecast", "description": "", "parameters": parameters}})


def test_an_evil_pattern_in_a_tool_schema_is_checked_within_the_budget():
    import time

    tool = _tool_with({"type": "object", "properties": {"city": {"type": "string", "pattern": "^(a+)+$"}}})
    start = time.perf_counter()  # `re` backtracks for seconds on this argument
    result = run_call(tool, {"city": "a" * 40 + "!"})
    assert time.perf_counter() - start < 2.0
    assert result.error == "invalid_arguments" and "forecast" in result.content


@pytest.mark.parametrize("ref", ["#/$defs/missing", "https://example.com/schema.json"])
def test_an_unresolvable_ref_in_a_tool_schema_is_a_message_not_a_download(ref):
    tool = _tool_with({"type": "object", "properties": {"city": {"$ref": ref}}})
    result = run_call(tool, {"city": "Oslo"})
    assert result.error == "invalid_arguments" and "$ref" in result.content


@pytest.mark.parametrize("parameters", [{"type": "object", "enum": {1, 2}}, {"type": "object", "maximum": 10**5000}])
def test_a_python_schema_that_is_not_json_data_is_a_message(parameters):
    result = run_call(_tool_with(parameters), {"city": "Oslo"})
    assert result.error == "invalid_arguments" and "not JSON data" in result.content
