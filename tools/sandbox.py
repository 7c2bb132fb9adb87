"""Run a tool call safely: validate the arguments against the tool's schema, then run it in
a separate process with a wall-clock limit and a memory cap. Whatever goes wrong (invalid
call, exception, timeout, memory) comes back as a ToolResult whose `content` is a message
for the model; the trainer never sees an exception."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import traceback
from dataclasses import dataclass

from jsonschema.exceptions import SchemaError
from referencing.exceptions import Unresolvable

from tools.registry import Tool
from tools.validation import PatternTimeout, first_error, pattern_budget, schema_validator


@dataclass(frozen=True)
class ToolResult:
    content: str  # what the model sees as the tool message
    ok: bool
    error: str | None = None  # invalid_arguments | exception | timeout | memory | crashed


def _format(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def validate(tool: Tool, arguments: dict) -> str | None:
    """None if the arguments fit the tool's schema, else a message for the model saying what is
    wrong. Time-bounded like the rewards' check (tools/validation.py): the model wrote them."""
    try:
        with pattern_budget():
            e = first_error(schema_validator(tool.spec["parameters"]), arguments)
    except SchemaError as bad:
        return f"Error: the schema of {tool.name} is invalid ({bad.message}); the call was not run"
    except (TypeError, ValueError) as bad:  # a Python-made schema that is not JSON data (a set, a huge int)
        return f"Error: the schema of {tool.name} is not JSON data ({bad}); the call was not run"
    except Unresolvable as bad:
        return f"Error: the schema of {tool.name} has a $ref that does not resolve ({bad}); the call was not run"
    except PatternTimeout as slow:
        return f"Error: invalid arguments for {tool.name}: checking them against pattern {slow} took too long"
    except RecursionError:
        return f"Error: invalid arguments for {tool.name}: nested too deeply to check"
    if e is None:
        return None
    where = ".".join(map(str, e.path)) or "arguments"
    return f"Error: invalid arguments for {tool.name}: {where}: {e.message}"


def _child(conn, fn, arguments: dict, memory_mb: int) -> None:
    # the cap is on top of what the process already maps (a fork of the trainer maps GBs)
    with open(f"/proc/{os.getpid()}/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    limit = mapped + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        conn.send(("ok", _format(fn(**arguments))))
    except MemoryError:
        conn.send(("memory", f"Error: the tool ran out of memory (limit {memory_mb} MB)"))
    except BaseException as e:  # noqa: BLE001 - every failure becomes a message
        frame = traceback.extract_tb(e.__traceback__)[-1:] or [None]
        where = f" (line {frame[0].lineno})" if frame[0] else ""
        conn.send(("exception", f"Error: {type(e).__name__}: {e}{where}"))
    finally:
        conn.close()


def run_call(tool: Tool, arguments: dict, timeout_s: float = 5.0, memory_mb: int = 512) -> ToolResult:
    """Validate, then run tool(**arguments) under the limits (in this process when the tool is
    trusted and stateful, isolated=False: then only the validation and exception handling apply)."""
    problem = validate(tool, arguments)
    if problem:
        return ToolResult(problem, ok=False, error="invalid_arguments")
    if not tool.isolated:
        try:
            return ToolResult(_format(tool.fn(**arguments)), ok=True)
        except Exception as e:  # noqa: BLE001
            return ToolResult(f"Error: {type(e).__name__}: {e}", ok=False, error="exception")
    ctx = mp.get_context("fork")  # fork: any function works, nothing to pickle or re-import
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, tool.fn, arguments, memory_mb), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            return ToolResult(f"Error: {tool.name} did not finish within {timeout_s:g} s", ok=False, error="timeout")
        try:
            status, content = parent.recv()
        except EOFError:
            return ToolResult(f"Error: {tool.name} crashed (exit code {proc.exitcode})", ok=False, error="crashed")
        return ToolResult(content, ok=status == "ok", error=None if status == "ok" else status)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(1)
        parent.close()


def run_named(calls: list[dict], tools: dict[str, Tool], timeout_s: float = 5.0, memory_mb: int = 512) -> list[ToolResult]:
    """Run parsed calls [{"name", "arguments"}] against the env's tools; an unknown name is a message too."""
    results = []
    for call in calls:
        tool_ = tools.get(call.get("name"))
        if tool_ is None:
            results.append(ToolResult(f"Error: no tool named {call.get('name')!r}; available: {sorted(tools)}",
                                      ok=False, error="unknown_tool"))
        else:
            results.append(run_call(tool_, call.get("arguments", {}), timeout_s, memory_mb))
    return results
