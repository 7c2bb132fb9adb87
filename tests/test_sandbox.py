"""Sandbox hardening: what an isolated tool starts dies with the call (orphans, fork loops),
it sees a scrubbed environment in a scratch dir that is removed, its files and result are
capped, a turn's calls run concurrently (in-process ones with a serial key one at a time),
and strict mode cuts the network and hides the trainer, or refuses loudly."""

import dataclasses
import json
import os
import signal
import socket
import time

import pytest

import tools.limits
import tools.sandbox
from tools.limits import STRICT_ENV
from tools.registry import Tool
from tools.sandbox import Limits, run_call, run_calls, run_named, strict_available


def _alive(pid: int) -> bool:
    """A process that runs (a zombie waiting for its reaper is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _pids(path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _cleanup(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def spawn(path: str, hang: bool) -> int:
    """Start a long subprocess, write its pid, then return or hang.

    Args:
        path: File to write the pid to.
        hang: Sleep instead of returning.
    """
    import subprocess

    pid = subprocess.Popen(["sleep", "60"]).pid
    with open(path, "w") as f:
        f.write(str(pid))
    if hang:
        time.sleep(60)
    return pid


@pytest.mark.parametrize("hang", [False, True])
def test_a_subprocess_the_tool_started_does_not_outlive_the_call(tmp_path, hang):
    path = tmp_path / "pid"
    try:
        result = run_call(Tool.from_function(spawn), {"path": str(path), "hang": hang}, timeout_s=1.0)
        assert result.error == ("timeout" if hang else None)
        (pid,) = _pids(path)
        assert not _alive(pid)
    finally:
        _cleanup(_pids(path))


def fork_loop(path: str) -> int:
    """Fork children that sleep, up to 200 (a bound for a broken sandbox).

    Args:
        path: File to append the children's pids to.
    """
    for n in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        with open(path, "a") as f:
            f.write(f"{pid}\n")
    return n


def test_a_fork_loop_is_stopped_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "pids"
    try:
        start = time.monotonic()
        result = run_call(Tool.from_function(fork_loop), {"path": str(path)}, timeout_s=10.0,
                          limits=Limits(max_processes=8))
        assert time.monotonic() - start < 5.0
        assert not result.ok and result.error in ("processes", "exception"), result  # exception: RLIMIT_NPROC (not root)
        assert _pids(path) and not any(_alive(pid) for pid in _pids(path))
        assert run_call(Tool.from_function(fork_loop), {"path": 5}).error == "invalid_arguments"  # still answers
    finally:
        _cleanup(_pids(path))


def big(n: int) -> str:
    """A long string.

    Args:
        n: Its length.
    """
    return "x" * n


@pytest.mark.parametrize("isolated", [True, False])
def test_a_huge_result_is_cut_with_a_note(isolated):
    result = run_call(Tool.from_function(big, isolated=isolated), {"n": 10_000_000})
    assert result.ok and result.content == "x" * 20_000 + "\n[result cut: 10,000,000 characters, showing the first 20,000]"
    small = run_call(Tool.from_function(big, isolated=isolated), {"n": 150}, limits=Limits(max_result_chars=100))
    assert small.content.endswith("[result cut: 150 characters, showing the first 100]")


def where(path: str, hang: bool) -> str:
    """Write a file in the working dir, report the dir, then return or hang.

    Args:
        path: File to write the working dir to.
        hang: Sleep instead of returning.
    """
    with open("scratch.txt", "w") as f:
        f.write("x")
    with open(path, "w") as f:
        f.write(os.getcwd())
    if hang:
        time.sleep(60)
    return os.getcwd()


@pytest.mark.parametrize("hang", [False, True])
def test_the_scratch_dir_is_fresh_and_removed(tmp_path, hang):
    path = tmp_path / "cwd"
    result = run_call(Tool.from_function(where), {"path": str(path), "hang": hang}, timeout_s=0.5)
    assert result.error == ("timeout" if hang else None)
    scratch = path.read_text()
    assert scratch != os.getcwd() and "toolcall-sandbox-" in scratch and not os.path.exists(scratch)


def environment(x: int) -> dict:
    """What the tool and its subprocesses see of the environment.

    Args:
        x: Ignored.
    """
    import subprocess
    import tempfile

    names = ("HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY")
    return {"env": {k: os.environ.get(k) for k in names}, "home": os.environ["HOME"], "cwd": os.getcwd(),
            "tmp": tempfile.gettempdir(), "sub": subprocess.run(["env"], capture_output=True, text=True).stdout}


def test_secrets_in_the_environment_are_not_visible_to_the_tool(monkeypatch):
    for name in ("HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "s3cr3t-value")
    result = run_call(Tool.from_function(environment), {"x": 0})
    seen = json.loads(result.content)
    assert seen["env"] == {"HF_TOKEN": None, "WANDB_API_KEY": None, "AWS_SECRET_ACCESS_KEY": None}
    assert "s3cr3t-value" not in seen["sub"] and seen["home"] == seen["tmp"] == seen["cwd"]


def write(kb: int) -> int:
    """Write a file.

    Args:
        kb: Its size in KiB.
    """
    with open("out.bin", "wb") as f:
        f.write(b"\0" * (kb * 1024))
    return kb


def test_a_file_past_max_file_mb_cannot_be_written():
    limits = Limits(max_file_mb=1)
    result = run_call(Tool.from_function(write), {"kb": 2048}, limits=limits)
    assert result.error == "exception" and "File too large" in result.content
    assert run_call(Tool.from_function(write), {"kb": 512}, limits=limits).content == "512"


def spin(x: int) -> int:
    """Burn CPU.

    Args:
        x: Ignored.
    """
    while True:
        x += 1


def test_cpu_time_is_capped_per_process():
    start = time.monotonic()
    result = run_call(Tool.from_function(spin), {"x": 0}, timeout_s=20.0, limits=Limits(cpu_s=1))
    assert result.error == "timeout" and "1 s of CPU time" in result.content and time.monotonic() - start < 10


def nap(seconds: float) -> float:
    """Sleep.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return seconds


def test_isolated_calls_of_a_turn_run_at_once():
    tool = Tool.from_function(nap)
    start = time.monotonic()
    results = run_calls([(tool, {"name": "nap", "arguments": {"seconds": 1 + i / 100}}) for i in range(4)])
    assert time.monotonic() - start < 2.5
    assert [r.content for r in results] == ["1.0", "1.01", "1.02", "1.03"]


def _recording_tool(events: list, serial) -> Tool:
    running = []

    def step(i: int) -> int:
        """Record start and end.

        Args:
            i: Call number.
        """
        running.append(i)
        events.append(("start", i, len(running)))
        time.sleep(0.1)
        events.append(("end", i))
        running.remove(i)
        return i

    return dataclasses.replace(Tool.from_function(step, isolated=False), serial=serial)


def test_in_process_calls_with_a_serial_key_keep_their_order():
    events = []
    tool = _recording_tool(events, serial="one-store")
    calls = [(tool, {"name": "step", "arguments": {"i": i}}) for i in range(4)]
    results = run_calls(calls[:2] + [(None, {"name": "nope"})] + calls[2:])
    assert [r.content for r in results[:2] + results[3:]] == ["0", "1", "2", "3"] and results[2].error == "unknown_tool"
    assert events == [e for i in range(4) for e in (("start", i, 1), ("end", i))]


def test_in_process_calls_without_a_key_overlap_and_isolated_ones_run_beside():
    events = []
    tool = _recording_tool(events, serial=None)
    start = time.monotonic()
    pairs = [(tool, {"name": "step", "arguments": {"i": i}}) for i in range(4)]
    results = run_calls(pairs + [(Tool.from_function(nap), {"name": "nap", "arguments": {"seconds": 0.3}})])
    assert time.monotonic() - start < 0.45
    assert [r.content for r in results] == ["0", "1", "2", "3", "0.3"]
    assert max(e[2] for e in events if e[0] == "start") > 1


def test_run_named_still_names_the_tools_for_an_unknown_or_malformed_call():
    results = run_named([{"name": "nope", "arguments": {}}, {"name": ["x"]}, "junk"], {"nap": Tool.from_function(nap)})
    assert [r.error for r in results] == ["unknown_tool"] * 3 and all("['nap']" in r.content for r in results)


def reach(port: int, pid: int) -> dict:
    """Try the network and the trainer.

    Args:
        port: A port listening on the host's loopback.
        pid: The trainer's pid.
    """
    seen = {}
    for name, address in (("internet", ("1.1.1.1", 53)), ("host", ("127.0.0.1", port))):
        try:
            socket.create_connection(address, timeout=2).close()
            seen[name] = "connected"
        except OSError as e:
            seen[name] = f"error: {e}"
    try:
        os.kill(pid, 0)
        seen["trainer"] = "can signal"
    except OSError as e:
        seen["trainer"] = f"error: {e}"
    return seen


def test_strict_mode_has_no_network_and_cannot_see_the_trainer(monkeypatch):
    if not strict_available():
        pytest.skip("this machine does not allow user/network/PID namespaces (unshare), so strict mode cannot run")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        args = {"port": server.getsockname()[1], "pid": os.getpid()}
        plain = json.loads(run_call(Tool.from_function(reach), args, limits=Limits(strict=False)).content)
        assert plain["host"] == "connected" and plain["trainer"] == "can signal"  # what strict mode takes away
        strict = json.loads(run_call(Tool.from_function(reach), args, limits=Limits(strict=True)).content)
        assert all(strict[k].startswith("error") for k in ("internet", "host", "trainer")), strict
        monkeypatch.setenv(STRICT_ENV, "1")
        assert Limits().is_strict()
        assert json.loads(run_call(Tool.from_function(reach), args).content)["host"].startswith("error")


def escape(marker: str) -> int:
    """Start `sleep marker` in a new session (out of the call's process group) and return.

    Args:
        marker: A number of seconds unique to the test, to find the process by.
    """
    r, w = os.pipe()  # close-on-exec: EOF once the child runs sleep
    if os.fork() == 0:
        os.setsid()
        os.execvp("sleep", ["sleep", marker])
    os.close(w)
    return len(os.read(r, 1))


def _with_marker(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[1:2] == [marker.encode()] and _alive(int(pid)):
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("strict", [False, True])
def test_leaving_the_process_group_escapes_only_without_strict_mode(strict):
    if strict and not strict_available():
        pytest.skip("this machine does not allow user/network/PID namespaces (unshare), so strict mode cannot run")
    marker = f"{30 + time.time_ns() % 10**6 / 10**7:.7f}"
    try:
        assert run_call(Tool.from_function(escape), {"marker": marker}, limits=Limits(strict=strict)).ok
        assert bool(_with_marker(marker)) is not strict  # plain mode: the documented limit, the escapee lives on
    finally:
        _cleanup(_with_marker(marker))


def test_strict_mode_refuses_loudly_where_namespaces_are_not_allowed(monkeypatch):
    monkeypatch.setattr(tools.sandbox, "strict_available", lambda: False)
    result = run_call(Tool.from_function(nap), {"seconds": 0}, limits=Limits(strict=True))
    assert result.error == "sandbox" and "strict sandbox mode" in result.content and "not run" in result.content

    def refuse():
        raise OSError(1, "unshare failed: Operation not permitted")

    monkeypatch.setattr(tools.sandbox, "strict_available", lambda: True)
    monkeypatch.setattr(tools.limits, "unshare_strict", refuse)  # the child's view: the OS says no
    result = run_call(Tool.from_function(nap), {"seconds": 0}, limits=Limits(strict=True))
    assert result.error == "sandbox" and "Operation not permitted" in result.content


def test_limits_name_what_to_fix():
    with pytest.raises(ValueError, match="max_processes"):
        Limits(max_processes=0)
    assert Limits(cpu_s=None).cpu_seconds(2.5) == 4
