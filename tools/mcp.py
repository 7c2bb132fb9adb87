"""Tools from an MCP server over stdio: the server's tools/list becomes our Tool specs, and a
call becomes its tools/call.

    time = MCPTools("mcp-server-time", ["--local-timezone", "UTC"])
    time.specs()                                 # [{"name": "get_current_time", ...}, ...]
    time.tools()[0].fn(timezone="Europe/Paris")  # the server's answer, as text

or, in a config (env.tools, see tools/sources.py): {mcp: {command: mcp-server-time, args: [...]}}.

The server is started at construction, so a missing command or a server that dies at start
fails there, with a ValueError saying what to install; its tools are listed once and cached.
One server process serves every episode: whatever state it keeps is shared, and state() is {}.
A background thread runs an asyncio loop that owns the stdio transport and the ClientSession
(anyio wants a context manager opened and closed by one task: an "owner" task per server
process holds both and waits for a stop event). Tool.fn is synchronous: it hands call_tool
to that loop and waits, so calls from several threads are in flight at once.

What a call can end in: the text of the result (text items joined; other items as a short
JSON description); RuntimeError(text) for an is_error result; TimeoutError naming the server,
the tool and the limit; RuntimeError "MCP server ... crashed: ...; restarted" when the process
dies (or the connection breaks) during the call. A crashed server is restarted for the next
call (one found dead between calls is restarted before the next call), up to `restarts` times
in a row (a call that succeeds resets the count); after that every call fails with a message
saying it is down. tools/sandbox.py turns each error into an
"Error: ..." message for the model.

The server process gets the SDK's environment: a safe subset of ours (HOME, PATH, SHELL, TERM,
USER, LOGNAME) plus `env`. Its stderr is kept (the last 4 KB) for error messages, and logged at
DEBUG level on the `tools.mcp` logger.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import copy
import json
import logging
import os
import shlex
import shutil
import threading
from collections.abc import Mapping, Sequence

from tools.registry import Tool

try:
    import anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client
    from mcp.shared.exceptions import MCPError
    from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT, PaginatedRequestParams
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise ImportError(f"tools.mcp needs the MCP Python SDK 2.x ({missing}): pip install 'mcp>=2'") from None

log = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 4096
CONFIG_KEYS = ("command", "args", "env", "cwd", "timeout_s", "include", "prefix", "restarts", "start_timeout_s")


class MCPEpisode:
    """EpisodeTools over a shared server: the same tools (and process) for every episode."""

    def __init__(self, tools: dict[str, Tool]):
        self.tools = dict(tools)

    def state(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class _StartError(Exception):
    """The server could not be started or did not answer initialize/list_tools."""


class _Process:
    """One run of the server process: the owner task, its session, its stderr tail."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future = loop.create_future()  # -> list of mcp Tool models, or the start error
        self.stop = asyncio.Event()
        self.session: ClientSession | None = None
        self.dead = False  # the server's stdout closed: it exited, or we stopped it
        self.stderr = b""
        self.stderr_closed = asyncio.Event()  # every writer of its stderr is gone
        self.task: asyncio.Task | None = None

    async def settled_tail(self) -> str:
        """The stderr tail once the dead process's last words are read (bounded: a child may hold the pipe)."""
        try:
            await asyncio.wait_for(self.stderr_closed.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        tail = self.stderr_tail()
        return f" (its stderr ends: {_shorten(tail, 400)})" if tail else ""

    def stderr_tail(self, lines: int = 3) -> str:
        """The last lines the server wrote to stderr (a traceback's last lines name the error)."""
        text = self.stderr.decode("utf-8", "replace")
        kept = [line.strip() for line in text.splitlines() if line.strip(" ^~\t")]  # not caret markers
        return " | ".join(kept[-lines:])


class MCPTools:
    """A ToolSource over the tools of one MCP server, started as `command *args` over stdio (in `cwd`,
    with `env` added to the environment) when this object is made.

    timeout_s: the limit of one call. include: the server's tool names to offer (default all).
    prefix: put before every tool name ("time_" offers get_current_time as time_get_current_time),
    so two servers' tools cannot clash. restarts: how many crashes in a row are restarted.
    start_timeout_s: the limit for starting (initialize + list_tools).
    """

    def __init__(self, command: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 cwd: str | None = None, timeout_s: float = 30.0, include: Sequence[str] | None = None,
                 prefix: str | None = None, restarts: int = 3, start_timeout_s: float = 60.0):
        self.command, self.args = _check_command(command), _strings(args, "args")
        self.env = _strings_map(env) if env is not None else None
        include = _strings(include, "include") if include is not None else None
        if cwd is not None and not os.path.isdir(cwd):
            raise ValueError(f"MCP server {command}: cwd {cwd!r} is not a directory")
        self.cwd = cwd
        for key, value in (("timeout_s", timeout_s), ("start_timeout_s", start_timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"MCP server {command}: {key} must be a positive number of seconds, got {value!r}")
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
            raise ValueError(f"MCP server {command}: restarts must be an integer >= 0, got {restarts!r}")
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError(f"MCP server {command}: prefix must be a string, got {prefix!r}")
        self.timeout_s, self.start_timeout_s, self.restarts = float(timeout_s), float(start_timeout_s), restarts
        self.prefix = prefix or ""
        self.name = _shorten(shlex.join([self.command, *self.args]))
        self._params = StdioServerParameters(command=self.command, args=self.args, env=self.env, cwd=self.cwd)
        _check_found(self.command, self.args, self.env, self.cwd)

        self._closed = False
        self._close_lock = threading.Lock()
        self._crashes = 0  # crashes in a row; a call that succeeds resets it
        self._down: str | None = None
        self._process: _Process | None = None  # the current server process
        self._processes: set[_Process] = set()  # every one not yet stopped (close() stops them all)
        self._lock: asyncio.Lock | None = None  # made on the loop: serialises starts and restarts
        self._stderr_fds: set[int] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mcp {self.command}", daemon=True)
        self._thread.start()
        try:
            listed = self._submit(self._first_start(), self.start_timeout_s + 15, "start")
        except BaseException:
            self._stop_loop()
            raise
        self._tools = self._make_tools(listed, include)
        atexit.register(self.close)

    # ------------------------------------------------------------------ ToolSource

    def specs(self, task: dict | None = None) -> list[dict]:
        return [t.spec for t in self._tools.values()]

    def episode(self, task: dict | None) -> MCPEpisode:
        return MCPEpisode(self._tools)

    def tools(self) -> list[Tool]:
        return list(self._tools.values())

    def close(self) -> None:
        """Stop the server (closing its stdin, then killing its process group if it lingers) and the loop."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
            except Exception as e:  # noqa: BLE001 - closing goes on whatever happened
                log.warning("MCP server %s: stopping it failed: %s", self.name, e)
        self._stop_loop()

    def __enter__(self) -> "MCPTools":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MCPTools({self.name!r}, tools={sorted(self._tools) if hasattr(self, '_tools') else None})"

    # ------------------------------------------------------------------ calls (caller's thread)

    def _make_tools(self, listed: list, include: list[str] | None) -> dict[str, Tool]:
        by_name = {t.name: t for t in listed}
        if include is not None:
            unknown = [n for n in include if n not in by_name]
            if unknown:
                self.close()
                raise ValueError(f"MCP server {self.name}: include names {unknown}, which it does not offer; "
                                 f"its tools are {sorted(by_name)}")
            by_name = {n: by_name[n] for n in include}
        made = {}
        for original, listing in by_name.items():
            exposed = self.prefix + original
            parameters = copy.deepcopy(listing.input_schema) or {"type": "object", "properties": {}}
            schema = {"type": "function",
                      "function": {"name": exposed, "description": listing.description or "", "parameters": parameters}}
            made[exposed] = Tool(fn=self._caller(original, exposed), schema=schema, isolated=False, serial=None)
        return made

    def _caller(self, original: str, exposed: str):
        def call(**arguments):
            result = self._submit(self._call(original, arguments), self.start_timeout_s + self.timeout_s + 15, original)
            return _result_text(result)

        call.__name__ = exposed
        call.__qualname__ = f"MCPTools.{exposed}"
        return call

    def _submit(self, coro, wait_s: float, what: str):
        """Run a coroutine on the loop and wait for it (bounded: the loop's own limits come first)."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"MCP server {self.name} is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done, _ = concurrent.futures.wait([future], wait_s)
        if not done:
            future.cancel()
            raise TimeoutError(f"MCP server {self.name}: {what} did not finish within {wait_s:g} s")
        if future.cancelled():
            raise RuntimeError(f"MCP server {self.name} was closed during the call to {what}")
        return future.result()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            for fd in list(self._stderr_fds):
                self._loop.remove_reader(fd)
                _close_fd(fd)
            self._stderr_fds.clear()
            self._loop.close()

    # ------------------------------------------------------------------ the loop's side

    async def _first_start(self) -> list:
        self._lock = asyncio.Lock()
        try:
            self._process = await self._start()
        except _StartError as e:
            raise ValueError(f"MCP server {self.name} failed to start: {e}") from None
        return self._process.ready.result()

    async def _start(self) -> _Process:
        process = _Process()
        self._processes.add(process)
        process.task = asyncio.get_running_loop().create_task(self._own(process))
        try:
            await asyncio.shield(process.ready)
        except Exception as e:  # noqa: BLE001 - described for the caller
            await self._stop(process)
            raise _StartError(self._start_error(e, await process.settled_tail())) from None
        return process

    def _start_error(self, e: BaseException, tail: str) -> str:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            what = "not found" if isinstance(e, FileNotFoundError) else "not executable"
            return f"command {what} ({e}); {_install_hint(self.command, self.args)}"
        run = f"run `{shlex.join([self.command, *self.args])}` in a shell to see the whole error"
        if "No module named" in tail:
            run = _install_hint(self.command, self.args)
        if isinstance(e, MCPError) and e.code == CONNECTION_CLOSED:
            return f"it exited before answering initialize{tail}; {run}"
        return f"{type(e).__name__}: {e}{tail}; {run}"

    async def _own(self, process: _Process) -> None:
        """The owner task: opens the transport and session, lists the tools, waits for stop, closes."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        self._stderr_fds.add(read_fd)
        loop.add_reader(read_fd, self._read_stderr, read_fd, process)
        errlog = os.fdopen(write_fd, "w")
        try:
            async with stdio_client(self._params, errlog=errlog) as (read, write):
                errlog.close()  # the child holds its own copy
                send, receive = anyio.create_memory_object_stream(0)
                async with anyio.create_task_group() as group:
                    group.start_soon(_forward, read, send, process)
                    async with ClientSession(receive, write) as session:
                        with anyio.fail_after(self.start_timeout_s):
                            await session.initialize()
                            tools = await _list_tools(session)
                        process.session = session
                        process.ready.set_result(tools)
                        await process.stop.wait()
                    group.cancel_scope.cancel()
        except BaseException as e:  # noqa: BLE001 - reported through `ready` to whoever waits on the start
            error = _leaf(e)
            if not process.ready.done():
                process.ready.set_exception(TimeoutError(f"no answer within {self.start_timeout_s:g} s")
                                            if isinstance(error, TimeoutError) else error)
            else:
                log.debug("MCP server %s: the session ended with %r", self.name, error)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            process.dead = True
            self._processes.discard(process)
            if not errlog.closed:
                errlog.close()

    def _read_stderr(self, fd: int, process: _Process) -> None:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:  # every writer closed: the server and its children are gone
            self._loop.remove_reader(fd)
            self._stderr_fds.discard(fd)
            _close_fd(fd)
            process.stderr_closed.set()
            return
        process.stderr = (process.stderr + chunk)[-STDERR_TAIL_BYTES:]
        log.debug("MCP server %s stderr: %s", self.name, chunk.decode("utf-8", "replace").rstrip())

    async def _stop(self, process: _Process) -> None:
        process.stop.set()
        if process.task is not None and not process.task.done():
            await asyncio.wait({process.task}, timeout=15)  # the SDK bounds its shutdown (stdin, TERM, KILL)
            if not process.task.done():
                process.task.cancel()

    async def _live(self) -> _Process:
        """The running server; one that died between calls is restarted first (it counts as a crash)."""
        async with self._lock:
            if self._closed:
                raise RuntimeError(f"MCP server {self.name} is closed")
            if self._down:
                raise RuntimeError(self._down)
            if self._process.dead:
                outcome = await self._restart(self._process)
                if self._process.dead:
                    raise RuntimeError(f"MCP server {self.name} exited; {outcome}")
            return self._process

    async def _restart(self, dead: _Process) -> str:
        """Replace a dead server (lock held); what happened, for the error message."""
        self._crashes += 1
        await self._stop(dead)
        if self._crashes > self.restarts:
            self._down = (f"MCP server {self.name} is down: it crashed {self._crashes} times in a row "
                          f"(restarts={self.restarts}); fix the server, or allow more restarts")
            return (f"not restarted ({self._crashes} crashes in a row, restarts={self.restarts}): "
                    "every further call fails")
        try:
            self._process = await self._start()
        except _StartError as e:
            return f"restarting it failed: {e}"
        return "restarted"

    async def _crashed(self, process: _Process, tool: str, why: str) -> None:
        tail = await process.settled_tail()
        async with self._lock:
            if self._closed:
                raise RuntimeError(f"MCP server {self.name} was closed during the call to {tool}")
            if self._process is process and not self._down:
                process.dead = True
                outcome = await self._restart(process)  # the first call to see the crash restarts the server
            elif self._down:
                outcome = "it is down"
            else:
                outcome = "restarting it failed" if self._process.dead else "restarted"
        raise RuntimeError(f"MCP server {self.name} crashed: {why} during the call to {tool}{tail}; {outcome}")

    async def _call(self, tool: str, arguments: dict):
        process = await self._live()
        try:
            result = await process.session.call_tool(tool, arguments, read_timeout_seconds=self.timeout_s)
        except MCPError as e:
            if e.code == REQUEST_TIMEOUT:
                raise TimeoutError(f"MCP server {self.name}: {tool} did not finish within {self.timeout_s:g} s") \
                    from None
            if e.code == CONNECTION_CLOSED or process.dead:
                await self._crashed(process, tool, "the connection closed")
            raise RuntimeError(f"MCP server {self.name}: {tool}: {e.message}") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            await self._crashed(process, tool, f"the connection broke ({type(e).__name__})")
        except Exception as e:  # noqa: BLE001 - a malformed answer (its output schema, an unexpected result type)
            raise RuntimeError(f"MCP server {self.name}: {tool}: {type(e).__name__}: {e}") from None
        self._crashes = 0
        return result

    async def _shutdown(self) -> None:
        """Cancel the calls in flight, then stop every server process this object started."""
        owners = {p.task for p in self._processes}
        calls = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t not in owners]
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await asyncio.gather(*(self._stop(p) for p in list(self._processes)))


# ---------------------------------------------------------------------- helpers


async def _forward(read, send, process: _Process) -> None:
    """Pass the server's messages to the session; the end of them means the server is gone."""
    try:
        async with send:
            async for item in read:
                await send.send(item)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
        pass  # our own shutdown closed one end
    finally:
        process.dead = True


async def _list_tools(session: ClientSession) -> list:
    tools, cursor = [], None
    while True:
        page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


def _result_text(result) -> str:
    """The text the model sees; an is_error result raises RuntimeError with that text."""
    parts = [item.text if item.type == "text" else json.dumps(_describe_item(item), ensure_ascii=False)
             for item in result.content]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    text = "\n".join(parts)
    if result.is_error:
        raise RuntimeError(text or "the tool reported an error without a message")
    return text


def _describe_item(item) -> dict:
    """A non-text content item, briefly: its type, MIME type, URI, name, size (never the bytes)."""
    found = {"type": item.type}
    for key in ("mime_type", "uri", "name"):
        if getattr(item, key, None):
            found[key] = str(getattr(item, key))
    if getattr(item, "data", None):
        found["bytes"] = len(item.data) * 3 // 4  # base64
    resource = getattr(item, "resource", None)
    if resource is not None:
        found["uri"] = str(resource.uri)
        if getattr(resource, "mime_type", None):
            found["mime_type"] = resource.mime_type
        if getattr(resource, "text", None) is not None:
            found["text"] = resource.text
        elif getattr(resource, "blob", None):
            found["bytes"] = len(resource.blob) * 3 // 4
    return found


def _leaf(e: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, which anyio task groups raise."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e




def _install_hint(command: str, args: list[str]) -> str:
    base = os.path.basename(command)
    if base.startswith("python") and len(args) >= 2 and args[0] == "-m":
        return f"check that the module is installed (pip install {args[1].split('.')[0].replace('_', '-')})"
    if base.startswith("python"):
        return f"check that `{shlex.join([command, *args])}` runs in a shell (the script and what it imports)"
    if base in ("npx", "node", "npm"):
        return "check that Node.js is installed and the server's npm package can be found"
    if base in ("uv", "uvx"):
        return "check that uv is installed (pip install uv) and can reach the server's package"
    return f"check that the server is installed (e.g. pip install {base}) and that `{shlex.join([command, *args])}` " \
           "runs in a shell"


def _check_command(command) -> str:
    if not isinstance(command, str) or not command.strip():
        raise ValueError(f"MCP server: command must be a non-empty string (the server's executable), got {command!r}")
    return command


def _check_found(command: str, args: list[str], env: dict | None, cwd: str | None) -> None:
    """A command that is not on PATH (or, given as a path, not there) fails here, before anything starts."""
    path = (env or {}).get("PATH", os.environ.get("PATH", os.defpath))
    where = os.path.join(cwd, command) if cwd and os.sep in command else command  # relative to the server's cwd
    if shutil.which(where, path=path) is None:
        given = " on the PATH given in env" if env and "PATH" in env else ""
        raise ValueError(f"MCP server {command}: command {command!r} not found{given}; {_install_hint(command, args)}")


def _strings(values, key: str) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"MCP server: {key} must be a list of strings, e.g. [--local-timezone, UTC]; got {values!r}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (str, int, float))]
    if bad:
        raise ValueError(f"MCP server: {key} must hold strings; {bad!r} are not")
    return [str(v) for v in values]


def _strings_map(values) -> dict[str, str]:
    if not isinstance(values, Mapping):
        raise ValueError(f"MCP server: env must be a mapping of variable names to strings, got {values!r}")
    bad = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (str, int, float))}
    if bad:
        raise ValueError(f"MCP server: env values must be strings; {bad!r} are not")
    return {str(k): str(v) for k, v in values.items()}


def _plain(value):
    """Config containers (OmegaConf's included) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def from_config(entry: Mapping) -> MCPTools:
    """An MCPTools from a config entry {command, args, env, cwd, timeout_s, include, prefix, restarts,
    start_timeout_s}; any other key is refused by name."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"MCP server config must be a mapping with at least `command`, got {entry!r}")
    unknown = sorted(set(entry) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"MCP server config: unknown key(s) {unknown}; the keys are {list(CONFIG_KEYS)}")
    if "command" not in entry:
        raise ValueError(f"MCP server config {dict(entry)!r} has no `command` (the server's executable, "
                         "e.g. command: mcp-server-time)")
    return MCPTools(**{key: _plain(value) for key, value in entry.items()})
