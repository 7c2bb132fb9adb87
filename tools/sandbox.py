"""Run tool calls safely. Every call's arguments are validated against the tool's schema first;
whatever goes wrong after that (invalid call, exception, timeout, memory, too many processes)
comes back as a ToolResult whose `content` is a message for the model: the trainer never sees
an exception. The calls of one turn run concurrently (`run_calls`).

An isolated call (Tool.isolated=True) runs in a forked child that
- starts its own session and process group: no terminal signals reach it, and on timeout, on
  too many processes and after a normal return the whole group is SIGKILLed, so subprocesses
  the tool started (hung or returned) do not outlive the call;
- runs under rlimits (tools/limits.py): address space (memory_mb on top of what the fork maps),
  file size (max_file_mb), CPU seconds per process, and, for a non-root user, the per-user task
  count. Root ignores RLIMIT_NPROC, so the parent also counts the group's live processes in
  /proc every POLL_S and kills the group past max_processes;
- works in a fresh scratch dir (cwd, HOME, TMPDIR), removed afterwards, even after a timeout;
- sees only allowlisted environment variables (limits.KEEP_ENV and Limits.keep_env), so tokens
  such as HF_TOKEN, WANDB_API_KEY or AWS_* are not in its environment;
- sends back at most max_result_chars characters (cut in the child, so a huge result never
  crosses the pipe).

Not isolated without strict mode: the child runs as the trainer's uid, so it can read and
write every file that uid can (outside the scratch dir too), use the network, read the
trainer's /proc/<pid>/environ and signal or kill it. A process that leaves the group (setsid,
setpgid) escapes the kill and the count; threads are not counted; the number of files is not
capped. It is a fork: the trainer's memory, secrets already read into Python objects
included, is readable in the child.

Strict mode (Limits.strict=True, or the env var limits.STRICT_ENV=1) adds new user, network,
PID and mount namespaces (unshare(2)): no network (not even the host's loopback); the trainer's
pid does not exist in the PID namespace, so kill() cannot reach it; /proc is remounted to list
the namespace only where the OS allows, and where it does not, the host's /proc still lists
the trainer (its cmdline readable) but, without capabilities in the host's user namespace,
not its environ or memory. When the namespace's first process ends the kernel kills every
process in it, so setsid does not escape. Still shared: the file system with the same uid
(root stays root for its files) and the forked memory. Where the OS refuses namespaces, a
strict call is not run: its result is an error "sandbox" saying so, never a silently
unisolated run; `strict_available()` tells beforehand.

In-process calls (Tool.isolated=False: trusted, stateful) get the validation, exception
handling and the result cap only; they run in a thread pool, calls sharing a Tool.serial key
one at a time in call order, and have no time limit (a thread cannot be killed)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import struct
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Iterable

from jsonschema.exceptions import SchemaError
from referencing.exceptions import Unresolvable

from tools.limits import (STRICT_ENV, Limits, StrictUnavailable, confine, cut, group_members, kill_group,
                          remove_scratch, settle, strict_available, user_tasks)
from tools.registry import Tool
from tools.validation import PatternTimeout, first_error, pattern_budget, schema_validator

__all__ = ["Limits", "ToolResult", "run_call", "run_calls", "run_named", "strict_available", "unknown_tool", "validate"]

POLL_S = 0.05  # how often the parent counts each call's processes
MAX_THREADS = 8  # in-process calls running at once
_HEADER = struct.Struct("!I")  # length of the child's JSON message [status, content]
_KINDS = ("ok", "exception", "memory", "sandbox")


@dataclass(frozen=True)
class ToolResult:
    content: str  # what the model sees as the tool message
    ok: bool
    error: str | None = None  # invalid_arguments | unknown_tool | exception | timeout | memory | processes
    # | crashed | sandbox (strict mode refused by the OS)


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


def _describe(e: BaseException) -> str:
    try:
        frame = traceback.extract_tb(e.__traceback__)[-1:]
        return f"Error: {type(e).__name__}: {e}" + (f" (line {frame[0].lineno})" if frame else "")
    except Exception:  # noqa: BLE001 - an exception whose str() fails
        return f"Error: {type(e).__name__}"


# --- the child ---------------------------------------------------------------------------------
def _send(fd: int, status: str, content: str) -> None:
    data = json.dumps([status, content], ensure_ascii=False).encode("utf-8", "surrogatepass")
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _run_tool(tool: Tool, arguments: dict, limits: Limits, fd: int) -> None:
    try:
        status, content = "ok", _format(tool.fn(**arguments))
    except MemoryError:
        status, content = "memory", f"Error: the tool ran out of memory (limit {limits.memory_mb} MB)"
    except BaseException as e:  # noqa: BLE001 - every failure becomes a message
        status, content = "exception", _describe(e)
    _send(fd, status, cut(content, limits.max_result_chars))


def _child(tool: Tool, arguments: dict, limits: Limits, timeout_s: float, scratch: str, fd: int,
           nproc: int | None, strict: bool) -> None:
    code = 0
    try:
        try:
            waiter = confine(limits, timeout_s, scratch, nproc, strict)
        except StrictUnavailable as e:
            return _send(fd, "sandbox", _no_strict(tool, str(e)))
        if waiter is not None:  # strict: the namespace's first process ran the tool and ended so
            code = waiter
        else:
            _run_tool(tool, arguments, limits, fd)
    except BaseException:  # noqa: BLE001 - the parent reports the exit code
        code = 70
    finally:
        os._exit(code)


def _no_strict(tool: Tool, why: str) -> str:
    return (f"Error: {tool.name} was not run: strict sandbox mode is on (Limits.strict or {STRICT_ENV}) but this "
            f"machine does not allow user/network/PID namespaces ({why}). Allow unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0) or turn strict mode off")


# --- the parent --------------------------------------------------------------------------------
@dataclass
class _Flight:  # one isolated call in progress
    index: int  # in the turn's calls
    name: str
    pid: int  # the child, also its process group
    fd: int
    scratch: str
    deadline: float
    strict: bool
    buf: bytearray = field(default_factory=bytearray)
    eof: bool = False
    result: ToolResult | None = None

    def stop(self, result: ToolResult) -> None:
        kill_group(self.pid)
        self.result = self.result or result


def _launch(index: int, tool: Tool, arguments: dict, limits: Limits, timeout_s: float, nproc: int | None,
            others: list[_Flight]) -> _Flight | ToolResult:
    strict = limits.is_strict()
    if strict and not strict_available():
        return ToolResult(_no_strict(tool, "unshare(2) is not permitted"), ok=False, error="sandbox")
    scratch = tempfile.mkdtemp(prefix="toolcall-sandbox-")
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r), os.close(w), shutil.rmtree(scratch, ignore_errors=True)
        return ToolResult(f"Error: {tool.name} could not start ({e})", ok=False, error="crashed")
    if pid == 0:
        for fd in (r, *(f.fd for f in others)):
            os.close(fd)
        _child(tool, arguments, limits, timeout_s, scratch, w, nproc, strict)
    os.close(w)
    os.set_blocking(r, False)
    return _Flight(index, tool.name, pid, r, scratch, time.monotonic() + timeout_s, strict)


def _read(f: _Flight, limits: Limits) -> None:
    while not f.eof:
        try:
            chunk = os.read(f.fd, 1 << 16)
        except BlockingIOError:
            break
        f.eof = not chunk
        f.buf += chunk
    if f.result is not None or len(f.buf) < _HEADER.size:
        return
    (size,) = _HEADER.unpack_from(f.buf)
    if size > 6 * limits.max_result_chars + 4096:  # JSON escapes make a character at most 6 bytes
        return f.stop(ToolResult(f"Error: {f.name} sent a malformed result", ok=False, error="crashed"))
    if len(f.buf) >= _HEADER.size + size:
        try:
            status, content = json.loads(f.buf[_HEADER.size:_HEADER.size + size].decode("utf-8", "surrogatepass"))
            assert status in _KINDS and isinstance(content, str)
        except (ValueError, TypeError, AssertionError):
            return f.stop(ToolResult(f"Error: {f.name} sent a malformed result", ok=False, error="crashed"))
        f.stop(ToolResult(content, ok=status == "ok", error=None if status == "ok" else status))  # orphans go too


def _check_exit(f: _Flight, limits: Limits, timeout_s: float) -> None:
    try:  # WNOWAIT: the child stays unreaped until its group is killed (see limits.kill_group)
        info = os.waitid(os.P_PID, f.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else's wait(): gone, exit code unknown
        info = False
    if info is None:
        return
    _read(f, limits)
    if f.result is not None:
        return
    code = "unknown" if info is False else (
        -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status)
    if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        f.stop(ToolResult(f"Error: {f.name} used more than {limits.cpu_seconds(timeout_s)} s of CPU time",
                          ok=False, error="timeout"))
    else:
        f.stop(ToolResult(f"Error: {f.name} crashed (exit code {code})", ok=False, error="crashed"))


def _collect(flights: list[_Flight], limits: Limits, timeout_s: float) -> None:
    """Read every child's result against its deadline; kill a group past max_processes."""
    pending, next_count = list(flights), 0.0
    while pending:
        wait = max(0.0, min(POLL_S, min(f.deadline for f in pending) - time.monotonic()))
        poller = select.poll()  # not select(): a trainer's fds can be past 1024
        for f in pending:
            if not f.eof:
                poller.register(f.fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(wait * 1000)}  # with every pipe closed, poll just sleeps
        for f in pending:
            if f.fd in ready:
                _read(f, limits)
            if f.result is None:
                _check_exit(f, limits, timeout_s)
        now = time.monotonic()
        if now >= next_count:
            next_count = now + POLL_S
            members = group_members({f.pid for f in pending if f.result is None})
            for f in pending:
                if f.result is None and len(members[f.pid]) - f.strict > limits.max_processes:
                    f.stop(ToolResult(f"Error: {f.name} started more than {limits.max_processes} processes; it "
                                      "was stopped", ok=False, error="processes"))
        for f in pending:
            if f.result is None and now >= f.deadline:
                f.stop(ToolResult(f"Error: {f.name} did not finish within {timeout_s:g} s", ok=False, error="timeout"))
        pending = [f for f in pending if f.result is None]


def _finish(flights: list[_Flight]) -> None:
    """Kill every group, wait until its processes are gone, reap the children, remove the scratch dirs."""
    settle({f.pid for f in flights})
    for f in flights:
        os.close(f.fd)
        remove_scratch(f.scratch)


# --- in-process calls and the entry points -----------------------------------------------------
def _in_process(tool: Tool, arguments: dict, limits: Limits) -> ToolResult:
    try:
        return ToolResult(cut(_format(tool.fn(**arguments)), limits.max_result_chars), ok=True)
    except Exception as e:  # noqa: BLE001
        return ToolResult(cut(f"Error: {type(e).__name__}: {e}", limits.max_result_chars), ok=False, error="exception")


def unknown_tool(name, available: Iterable[str] | None = None) -> ToolResult:
    """The message for a call of a tool that does not exist (or that the task does not offer)."""
    known = f"; available: {sorted(available)}" if available is not None else ""
    return ToolResult(f"Error: no tool named {name!r}{known}", ok=False, error="unknown_tool")


def run_calls(pairs: list[tuple[Tool | None, dict]], timeout_s: float = 5.0, memory_mb: int | None = None,
              limits: Limits | None = None, available: Iterable[str] | None = None) -> list[ToolResult]:
    """Run one turn's calls [(tool or None when the name is unknown, {"name", "arguments"})]
    concurrently; results in call order. Isolated calls all start at once and each gets
    timeout_s from its start; `available` names the tools for the unknown-tool message."""
    limits = limits or Limits()
    limits = limits if memory_mb is None else replace(limits, memory_mb=memory_mb)  # the old keyword wins
    results: list[ToolResult | None] = [None] * len(pairs)
    isolated, serial_groups = [], {}
    for i, (tool, call) in enumerate(pairs):
        call = call if isinstance(call, dict) else {}
        if tool is None:
            results[i] = unknown_tool(call.get("name"), available)
        elif problem := validate(tool, arguments := call.get("arguments", {})):
            results[i] = ToolResult(problem, ok=False, error="invalid_arguments")
        elif tool.isolated:
            isolated.append((i, tool, arguments))
        else:  # one group per serial key, in call order; a call without a key is a group of its own
            serial_groups.setdefault(("key", tool.serial) if tool.serial is not None else ("call", i), []).append(i)

    def run_group(indices: list[int]) -> None:
        for i in indices:
            results[i] = _in_process(pairs[i][0], pairs[i][1].get("arguments", {}), limits)

    flights: list[_Flight] = []
    try:
        # RLIMIT_NPROC counts all the user's tasks; root ignores it (the parent's count still applies)
        nproc = user_tasks(os.getuid()) + len(isolated) * (limits.max_processes + 1) if isolated and os.getuid() else None
        for i, tool, arguments in isolated:  # every fork before any thread of ours starts
            started = _launch(i, tool, arguments, limits, timeout_s, nproc, flights)
            if isinstance(started, ToolResult):
                results[i] = started
            else:
                flights.append(started)
        groups = list(serial_groups.values())
        if len(groups) == 1 and not flights:  # nothing to overlap with: no thread
            run_group(groups[0])
        elif groups:
            with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(groups))) as pool:
                futures = [pool.submit(run_group, g) for g in groups]
                _collect(flights, limits, timeout_s)
                for future in futures:
                    future.result()
        else:
            _collect(flights, limits, timeout_s)
        for f in flights:
            results[f.index] = f.result
    finally:
        _finish(flights)
    return results


def run_call(tool: Tool, arguments: dict, timeout_s: float = 5.0, memory_mb: int | None = None,
             limits: Limits | None = None) -> ToolResult:
    """Validate, then run tool(**arguments): isolated under the limits, or in this process
    when the tool is trusted and stateful (isolated=False)."""
    return run_calls([(tool, {"name": tool.name, "arguments": arguments})], timeout_s, memory_mb, limits)[0]


def run_named(calls: list[dict], tools: dict[str, Tool], timeout_s: float = 5.0, memory_mb: int | None = None,
              limits: Limits | None = None) -> list[ToolResult]:
    """Run parsed calls [{"name", "arguments"}] against the env's tools; an unknown name is a message too."""
    names = [call.get("name") if isinstance(call, dict) else None for call in calls]
    pairs = [(tools.get(name) if isinstance(name, str) else None, call) for name, call in zip(names, calls)]
    return run_calls(pairs, timeout_s, memory_mb, limits, available=tools)
