"""Seeded multi-turn tasks over the executable built-in tools: each needs the result of one
call for the next (look up, then act), so only an episode that reads its tool messages can
solve it. Every row carries the gold calls in order (`ground_truth`), the final answer
(`answer`), and for tasks over the key-value store its starting and expected final state
(`initial_state`, `expected_state`), computed by running the real tools.

    dates       add_days, then days_between from the date it returned
    convert     calculate, then convert_units of the value it returned
    copy_key    kv_get a key, then kv_set another key to the value it returned
    save_sum    calculate, then kv_set a key to the value it returned
"""

from __future__ import annotations

import random

from tools.builtin import KeyValueStore
from tools.registry import Tool, get_tool

FAMILIES = ("dates", "convert", "copy_key", "save_sum")
KEYS = ["city", "color", "pet", "team", "fruit", "planet", "drink", "song", "book", "movie", "sport", "flower",
        "car", "game", "river", "dish", "artist", "island", "language", "tree"]
VALUES = ["Paris", "teal", "otter", "Falcons", "mango", "Neptune", "espresso", "Yellow Submarine", "Lima", "amber",
          "lynx", "kiwi", "Mars", "chai", "Oslo", "Clouds"]
TARGETS = ["favorite", "backup", "answer", "today", "pick", "saved", "choice", "result", "draft", "final", "copy",
           "winner", "note", "memo", "current", "target"]
COPY_ASKS = ["Look up the value stored under '{source}' and store it under '{target}' too.",
             "Read the value of key '{source}', then save that same value under the key '{target}'.",
             "Copy whatever is stored under '{source}' to the key '{target}'."]
SAVE_ASKS = ["Calculate {expression} and save the result under the key '{target}'.",
             "Work out {expression}, then store the result under '{target}'."]


def kv_specs() -> dict[str, dict]:
    return {t.name: t.spec for t in (Tool.from_function(m, isolated=False) for m in
                                     (KeyValueStore().kv_get, KeyValueStore().kv_set, KeyValueStore().kv_delete))}


def _run(name: str, **arguments):
    return get_tool(name).fn(**arguments)


def _date(rng: random.Random, year: int) -> str:
    return f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def multi_turn_task(rng: random.Random, family: str | None = None) -> dict:
    """One task of `family` (drawn by rng if None): {"messages", "tools", "ground_truth", "answer", ...}."""
    family = family or rng.choice(FAMILIES)
    spec = {name: get_tool(name).spec for name in ("calculate", "convert_units", "add_days", "days_between")}
    row: dict = {"family": family, "order_free": False}
    if family == "dates":
        start, days = _date(rng, 2026), rng.randint(3, 120)
        middle = _run("add_days", start=start, days=days)
        end = _date(rng, 2027)
        query = f"What date is {days} days after {start}? Then count the days from that date to {end}."
        calls = [{"name": "add_days", "arguments": {"start": start, "days": days}},
                 {"name": "days_between", "arguments": {"start": middle, "end": end}}]
        tools, answer = [spec["add_days"], spec["days_between"]], _run("days_between", start=middle, end=end)
    elif family == "convert":
        a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 9)
        expression = f"({a} + {b}) * {c}"
        units = rng.choice([("km", "mi"), ("kg", "lb"), ("l", "gal")])
        value = _run("calculate", expression=expression)
        query = f"Calculate {expression}, then convert that many {units[0]} to {units[1]}."
        calls = [{"name": "calculate", "arguments": {"expression": expression}},
                 {"name": "convert_units", "arguments": {"value": value, "from_unit": units[0], "to_unit": units[1]}}]
        tools = [spec["calculate"], spec["convert_units"]]
        answer = _run("convert_units", value=value, from_unit=units[0], to_unit=units[1])
    else:
        keys = rng.sample(KEYS, 3)
        data = {k: rng.choice(VALUES) for k in keys}
        target = rng.choice(TARGETS)
        kv = kv_specs()
        if family == "copy_key":
            source = keys[0]
            answer = data[source]
            query = rng.choice(COPY_ASKS).format(source=source, target=target)
            calls = [{"name": "kv_get", "arguments": {"key": source}},
                     {"name": "kv_set", "arguments": {"key": target, "value": answer}}]
            tools = [kv["kv_get"], kv["kv_set"], kv["kv_delete"]]
        else:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            expression = f"{a} * {b}"
            answer = str(_run("calculate", expression=expression))
            query = rng.choice(SAVE_ASKS).format(expression=expression, target=target)
            calls = [{"name": "calculate", "arguments": {"expression": expression}},
                     {"name": "kv_set", "arguments": {"key": target, "value": answer}}]
            tools = [spec["calculate"], kv["kv_get"], kv["kv_set"]]
        row["initial_state"] = {"KeyValueStore": {"data": data}}
        row["expected_state"] = {"KeyValueStore": {"data": {**data, target: answer}}}
    return {**row, "messages": [{"role": "user", "content": query}], "tools": tools, "ground_truth": calls,
            "answer": str(answer)}
