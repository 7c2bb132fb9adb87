"""Where an env's tools come from: `env.tools`, a list whose entries are any of

    - calculate                                  a registered tool or a `toolcall_rl.tools` entry point
    - {_target_: my_pkg.tools.search}            a typed Python function (sandboxed, see tools/sandbox.py)
    - {_target_: tools.builtin.KeyValueStore}    a stateful tool class: one instance per episode, its
      init: {...}                                public methods are the tools (schemas from type hints
                                                 and docstrings), its state is what final-state rewards read
    - {mcp: {command: mcp-server-time, args: [--local-timezone, UTC]}}   an MCP server over stdio
    - {_target_: envs.bfcl_multi_turn.BFCLTools} any object with specs(task) and episode(task) (ToolSource)

A ToolBox joins the entries into one ToolSource; a name given twice is an error at start-up.
"""

from __future__ import annotations

import importlib
import inspect
import json
from tools.registry import EpisodeTools, Tool, ToolSource, get_tool, lookup


class FixedTools:
    """EpisodeTools over tools that keep no state (shared by every episode)."""

    def __init__(self, tools: dict[str, Tool], state: dict | None = None):
        self.tools = tools
        self._state = state or {}

    def state(self) -> dict:
        return self._state

    def close(self) -> None:
        pass


class FunctionTools:
    """ToolSource over plain functions."""

    def __init__(self, tools: list[Tool]):
        self._tools = {t.name: t for t in tools}

    def specs(self, task: dict | None = None) -> list[dict]:
        return [t.spec for t in self._tools.values()]

    def episode(self, task: dict) -> EpisodeTools:
        return FixedTools(self._tools)


def public_methods(obj) -> list:
    """The bound methods of an instance that are its tools: public, defined on its class."""
    return [getattr(obj, name) for name, member in inspect.getmembers(type(obj), inspect.isfunction)
            if not name.startswith("_") and name not in ("tools", "state", "load_state")]


def json_state(obj) -> dict:
    """An instance's public attributes as JSON data (what final-state rewards compare)."""
    if callable(getattr(obj, "state", None)):
        return obj.state()
    return json.loads(json.dumps({k: v for k, v in vars(obj).items() if not k.startswith("_")}, default=str))


class StatefulInstances:
    """EpisodeTools of one episode: fresh instances of stateful classes, plus shared tools."""

    def __init__(self, instances: list, shared: dict[str, Tool]):
        self.instances = instances
        self.tools = dict(shared)
        for obj in instances:
            for method in public_methods(obj):
                self.tools[method.__name__] = Tool.from_function(method, isolated=False).with_serial(id(obj))

    def state(self) -> dict:
        return {type(obj).__name__: json_state(obj) for obj in self.instances}

    def close(self) -> None:
        for obj in self.instances:
            if callable(getattr(obj, "close", None)):
                obj.close()


class StatefulTools:
    """ToolSource over a class: an instance per episode (built with `init`, then given the task's
    `initial_state[ClassName]` through load_state(dict) if the class has one)."""

    def __init__(self, cls: type, init: dict | None = None, where: str = "env.tools"):
        self.cls, self.init, self.where = cls, dict(init or {}), where
        probe = self._new()  # fails here, at start-up, on bad init kwargs or untyped methods
        self._specs = [Tool.from_function(m, isolated=False).spec for m in public_methods(probe)]
        if not self._specs:
            raise ValueError(f"{where}: {cls.__qualname__} has no public methods to offer as tools")

    def _new(self):
        try:
            return self.cls(**self.init)
        except TypeError as e:
            raise ValueError(f"{self.where}: cannot build {self.cls.__qualname__}(**{self.init}): {e}. "
                             "Give its constructor arguments under `init:`") from None

    def specs(self, task: dict | None = None) -> list[dict]:
        return list(self._specs)

    def instance(self, task: dict):
        obj = self._new()
        initial = (task.get("initial_state") or {}).get(self.cls.__name__)
        if initial is not None:
            if not callable(getattr(obj, "load_state", None)):
                raise ValueError(f"task {task.get('id')!r} has initial_state for {self.cls.__name__}, "
                                 "which has no load_state(state) method")
            obj.load_state(initial)
        return obj

    def episode(self, task: dict) -> EpisodeTools:
        return StatefulInstances([self.instance(task)], {})


class ToolBox:
    """All of an env's tool sources as one: specs are the union; an episode gets one EpisodeTools
    holding every source's tools (fresh stateful instances, shared stateless tools)."""

    def __init__(self, sources: list[ToolSource]):
        self.sources = sources
        seen: dict[str, int] = {}
        for i, source in enumerate(sources):
            if getattr(source, "task_dependent", False):
                continue  # its names depend on the task (BFCL): checked per episode
            for spec in source.specs(None):
                if spec["name"] in seen:
                    raise ValueError(f"env.tools: tool {spec['name']!r} is given by entries {seen[spec['name']]} and "
                                     f"{i}: remove one, or give an MCP server a `prefix`")
                seen[spec["name"]] = i

    def specs(self, task: dict | None = None) -> list[dict]:
        return [spec for source in self.sources for spec in source.specs(task)]

    def episode(self, task: dict) -> EpisodeTools:
        return Joined([source.episode(task) for source in self.sources])


class Joined:
    def __init__(self, parts: list[EpisodeTools]):
        self.parts = parts
        self.tools = {name: t for part in parts for name, t in part.tools.items()}

    def state(self) -> dict:
        return {k: v for part in self.parts for k, v in part.state().items()}

    def close(self) -> None:
        for part in self.parts:
            part.close()


def load_object(path: str, where: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"{where}: cannot import {path!r} ({e}): give a dotted path module.name") from None


def source_of(obj, where: str, init: dict | None = None) -> ToolSource:
    """A ToolSource from what an entry names: a Tool, a function, a class, or a source already."""
    if isinstance(obj, Tool):
        return FunctionTools([obj])
    if inspect.isclass(obj):
        made = obj(**(init or {})) if hasattr(obj, "episode") and hasattr(obj, "specs") else None
        return made if made is not None else StatefulTools(obj, init, where)
    if hasattr(obj, "episode") and hasattr(obj, "specs"):
        return obj
    if init:
        raise ValueError(f"{where}: `init` is for classes; {obj!r} is a function")
    if callable(obj):
        return FunctionTools([Tool.from_function(obj)])
    raise ValueError(f"{where}: {obj!r} is neither a tool function, a tool class nor a ToolSource")


def tool_source(entry, where: str = "env.tools") -> ToolSource:
    """One entry of env.tools as a ToolSource (see the module docstring for the shapes)."""
    if isinstance(entry, str):
        found = lookup(entry)
        if found is None:
            get_tool(entry)  # raises with the names that exist
        return source_of(found, f"{where}: {entry}")
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: {entry!r} is not a tool: give a tool name, {{_target_: module.function_or_class}} "
                         "or {mcp: {command: ...}}")
    entry = dict(entry)
    if "mcp" in entry:
        if set(entry) != {"mcp"}:
            raise ValueError(f"{where}: an MCP entry has only the key `mcp`; got {sorted(entry)}")
        from tools.mcp import from_config

        return from_config(dict(entry["mcp"]))
    if "_target_" not in entry:
        raise ValueError(f"{where}: {entry!r} has neither `_target_` nor `mcp`")
    target, init = entry.pop("_target_"), entry.pop("init", None)
    if entry:
        raise ValueError(f"{where}: unknown keys {sorted(entry)} next to _target_ {target!r}: only `init` (constructor "
                         "arguments of a tool class) is allowed")
    return source_of(load_object(target, where), f"{where}: {target}", dict(init) if init else None)


def toolbox(entries, where: str = "env.tools") -> ToolBox:
    return ToolBox([tool_source(e, f"{where}[{i}]") for i, e in enumerate(entries or [])])
