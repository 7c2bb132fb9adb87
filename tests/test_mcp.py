"""tools/mcp.py against real MCP servers over stdio, offline: the reference time server
(mcp-server-time) and a server of our own (tests/fixtures/mcp_flaky_server.py, with a SQLite
`sql` tool) that crashes, hangs and fails on request. (mcp-server-sqlite, the reference SQLite
server, does not start under mcp 2: it uses the SDK 1.x decorators.) Each server
starts once per module where the test allows (a start costs about half a second)."""

import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="the MCP SDK is not installed (pip install mcp)")

from tests.procs import descendants, running  # noqa: E402
from tools.mcp import MCPTools, from_config  # noqa: E402
from tools.sandbox import run_named  # noqa: E402

FLAKY = str(Path(__file__).parent / "fixtures" / "mcp_flaky_server.py")


def console_script(name: str, module: str | None = None) -> list[str] | None:
    """The installed server's command: its console script beside this Python, on PATH, or `python -m`."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    if shutil.which(name):
        return [shutil.which(name)]
    return [sys.executable, "-m", module] if module else None


def flaky(tmp_path_factory=None, **kwargs) -> MCPTools:
    args = [FLAKY]
    if tmp_path_factory is not None:
        args += ["--db-path", str(tmp_path_factory.mktemp("mcp") / "flaky.db")]
    return MCPTools(sys.executable, args, **kwargs)


@pytest.fixture(scope="module")
def time_server():
    pytest.importorskip("mcp_server_time", reason="pip install mcp-server-time")
    command = console_script("mcp-server-time", "mcp_server_time")
    with MCPTools(command[0], [*command[1:], "--local-timezone", "UTC"], timeout_s=10) as server:
        yield server


@pytest.fixture(scope="module")
def flaky_server(tmp_path_factory):
    with flaky(tmp_path_factory, timeout_s=1.0, restarts=3) as server:
        yield server


def fn(source: MCPTools, name: str):
    return {t.name: t for t in source.tools()}[name].fn


def test_time_server_lists_its_tools_with_schemas(time_server):
    specs = {s["name"]: s for s in time_server.specs()}
    assert set(specs) == {"get_current_time", "convert_time"}
    assert specs["get_current_time"]["description"]
    params = specs["get_current_time"]["parameters"]
    assert params["type"] == "object" and params["required"] == ["timezone"]
    assert params["properties"]["timezone"]["type"] == "string"
    assert set(specs["convert_time"]["parameters"]["required"]) == {"source_timezone", "time", "target_timezone"}
    for tool in time_server.tools():
        assert tool.isolated is False and tool.serial is None
        assert tool.schema["type"] == "function" and tool.spec == specs[tool.name]


def test_time_server_answers_calls(time_server):
    assert "Asia/Tokyo" in fn(time_server, "get_current_time")(timezone="Asia/Tokyo")
    converted = fn(time_server, "convert_time")(source_timezone="UTC", time="12:00", target_timezone="Asia/Tokyo")
    assert "Asia/Tokyo" in converted and "21:00" in converted


def test_an_is_error_result_raises_with_its_text(time_server, flaky_server):
    with pytest.raises(RuntimeError, match="Invalid timezone"):
        fn(time_server, "get_current_time")(timezone="Nowhere/Atlantis")
    with pytest.raises(RuntimeError, match="^Error executing tool fail: no such thing$"):  # its text, verbatim
        fn(flaky_server, "fail")(message="no such thing")


def test_the_server_keeps_state_across_calls_and_episodes(flaky_server):
    sql = flaky_server.episode({"id": 1}).tools["sql"].fn
    sql(query="CREATE TABLE pets (name TEXT, legs INT)")
    sql(query="INSERT INTO pets VALUES ('cat', 4), ('bird', 2)")
    later = flaky_server.episode({"id": 2})  # the same server process serves every episode
    assert later.state() == {} and later.close() is None
    assert later.tools["sql"].fn(query="SELECT name, legs FROM pets ORDER BY legs") == '[["bird", 2], ["cat", 4]]'
    with pytest.raises(RuntimeError, match="SQL error: no such table: missing_table"):
        sql(query="SELECT * FROM missing_table")


def test_concurrent_calls_from_four_threads(flaky_server, time_server):
    sleep = fn(flaky_server, "sleep")
    clock = fn(time_server, "get_current_time")
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        slept = list(pool.map(lambda i: sleep(seconds=0.4), range(4)))
        zones = list(pool.map(lambda z: clock(timezone=z), ["UTC", "Europe/Paris", "Asia/Tokyo", "America/Lima"] * 2))
    assert slept == ["slept 0.4 s"] * 4
    assert all(z in text for z, text in zip(["UTC", "Europe/Paris", "Asia/Tokyo", "America/Lima"] * 2, zones))
    assert time.monotonic() - start < 1.4  # the sleeps were in flight together, not one after another


def test_a_call_slower_than_timeout_s_raises_timeout_error(flaky_server):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"mcp_flaky_server\.py.*sleep did not finish within 1 s"):
        fn(flaky_server, "sleep")(seconds=10)
    assert time.monotonic() - start < 3
    assert fn(flaky_server, "echo")(text="still here") == "still here"


def test_a_crash_fails_the_calls_in_flight_and_the_server_restarts(flaky_server):
    before = int(fn(flaky_server, "pid")())
    with ThreadPoolExecutor(2) as pool:
        sleeping = [pool.submit(fn(flaky_server, "sleep"), seconds=0.95) for _ in range(2)]
        time.sleep(0.5)  # both in flight
        crashed = r"MCP server .*mcp_flaky_server\.py.* crashed: .*call to crash; restarted"
        with pytest.raises(RuntimeError, match=crashed):
            fn(flaky_server, "crash")()
        for call in sleeping:
            with pytest.raises(RuntimeError, match=r"crashed: .*call to sleep; restarted"):
                call.result()
    assert fn(flaky_server, "echo")(text="back") == "back"
    after = int(fn(flaky_server, "pid")())
    assert after != before and not running(before)


def test_a_server_that_died_between_calls_is_restarted_before_the_next(flaky_server):
    before = int(fn(flaky_server, "pid")())
    os.kill(before, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while running(before) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # the client sees its stdout close
    assert fn(flaky_server, "echo")(text="fresh") == "fresh"
    assert int(fn(flaky_server, "pid")()) != before


def test_a_server_that_keeps_crashing_is_down_after_restarts():
    with flaky(timeout_s=5.0, restarts=1) as server:
        crash, echo = fn(server, "crash"), fn(server, "echo")
        with pytest.raises(RuntimeError, match="restarted"):
            crash()
        assert echo(text="ok") == "ok"  # a good call resets the count of crashes in a row
        with pytest.raises(RuntimeError, match="restarted"):
            crash()
        with pytest.raises(RuntimeError, match=r"crashed: .*not restarted \(2 crashes in a row, restarts=1\)"):
            crash()
        for _ in range(2):
            with pytest.raises(RuntimeError, match="is down: it crashed 2 times in a row"):
                echo(text="anyone?")


def test_close_leaves_no_child_process():
    threads = set(threading.enumerate())
    with flaky() as server:
        pid = int(fn(server, "pid")())
        assert pid in descendants(os.getpid())
    assert not running(pid) and pid not in descendants(os.getpid())
    assert set(threading.enumerate()) <= threads  # the loop thread ended too
    server.close()  # twice is fine
    with pytest.raises(RuntimeError, match="is closed"):
        fn(server, "echo")(text="hello?")


def test_a_server_that_cannot_start_is_a_value_error():
    with pytest.raises(ValueError, match=r"'mcp-server-nowhere' not found.*pip install mcp-server-nowhere"):
        MCPTools("mcp-server-nowhere", ["--flag"])
    with pytest.raises(ValueError, match=r"failed to start: it exited before answering initialize.*boom: no config"):
        MCPTools(sys.executable, ["-c", "import sys; sys.exit('boom: no config')"])
    with pytest.raises(ValueError, match=r"No module named no_such_server.*pip install no-such-server"):
        MCPTools(sys.executable, ["-m", "no_such_server"])
    with pytest.raises(ValueError, match=r"cwd '/no/such/dir' is not a directory"):
        MCPTools(sys.executable, [FLAKY], cwd="/no/such/dir")


def test_from_config_filters_and_prefixes_and_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['comand'\]"):
        from_config({"comand": "mcp-server-time"})
    with pytest.raises(ValueError, match="has no `command`"):
        from_config({"args": []})
    with pytest.raises(ValueError, match="args must be a list of strings"):
        from_config({"command": sys.executable, "args": "--local-timezone UTC"})
    with pytest.raises(ValueError, match=r"include names \['missing'\].*its tools are \['crash', 'echo'"):
        from_config({"command": sys.executable, "args": [FLAKY], "include": ["echo", "missing"]})
    with from_config({"command": sys.executable, "args": (FLAKY,), "env": {"FLAKY_UNUSED": 1},
                      "include": ["echo", "pid"], "prefix": "flaky_", "timeout_s": 5}) as server:
        assert [s["name"] for s in server.specs()] == ["flaky_echo", "flaky_pid"]
        assert fn(server, "flaky_echo")(text="hi") == "hi"


def test_calls_through_the_sandbox(time_server, flaky_server):
    tools = {**time_server.episode({}).tools, **flaky_server.episode({}).tools}
    ok, error, invalid, slow = run_named([
        {"name": "get_current_time", "arguments": {"timezone": "UTC"}},
        {"name": "get_current_time", "arguments": {"timezone": "Nowhere/Atlantis"}},
        {"name": "get_current_time", "arguments": {"zone": "UTC"}},
        {"name": "sleep", "arguments": {"seconds": 10}},
    ], tools)
    assert ok.ok and '"timezone": "UTC"' in ok.content
    assert not error.ok and error.content.startswith("Error: RuntimeError:") and "Invalid timezone" in error.content
    assert invalid.error == "invalid_arguments" and "timezone" in invalid.content
    assert not slow.ok and slow.content.startswith("Error: TimeoutError:") and "within 1 s" in slow.content
