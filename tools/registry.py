"""Tools from typed Python functions.

    @tool
    def get_weather(city: str, unit: str = "celsius") -> str:
        '''Current weather in a city.

        Args:
            city: City name.
            unit: celsius or fahrenheit.
        '''

`Tool.schema` is the JSON schema transformers' chat templates take (from the signature and
the Google-style docstring, via transformers.utils.get_json_schema); `Tool.spec` is the
plain {"name", "description", "parameters"} shape our task rows use. Tools are found by
name in REGISTRY or under the entry-point group `toolcall_rl.tools`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Callable, Hashable, Protocol

from transformers.utils import get_json_schema

ENTRY_POINT_GROUP = "toolcall_rl.tools"


@dataclass(frozen=True)
class Tool:
    fn: Callable
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters"}}
    isolated: bool = True  # run in a separate process under limits; False for trusted, stateful tools
    serial: Hashable | None = None  # in-process calls sharing this key run one at a time, in call order (one
    # stateful instance); the others of a turn run concurrently

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]

    @property
    def spec(self) -> dict:
        f = self.schema["function"]
        return {"name": f["name"], "description": f.get("description", ""), "parameters": f["parameters"]}

    def with_serial(self, key: Hashable) -> "Tool":
        return replace(self, serial=key)

    @classmethod
    def from_function(cls, fn: Callable, isolated: bool = True, name: str | None = None) -> "Tool":
        try:
            schema = get_json_schema(fn)
        except Exception as e:  # noqa: BLE001 - re-raised with what to fix
            raise ValueError(f"cannot make a tool of {getattr(fn, '__name__', fn)!r}: {e}. Give every argument a type "
                             "hint and describe it under 'Args:' in the docstring") from None
        if name:
            schema["function"]["name"] = name
        return cls(fn=fn, schema=schema, isolated=isolated)


class EpisodeTools(Protocol):
    """The tools of one episode: fresh stateful instances for it, shared stateless tools."""

    tools: dict[str, Tool]  # name -> Tool

    def state(self) -> dict:  # JSON-able final state of the episode's stateful instances ({} if none)
        ...

    def close(self) -> None: ...


class ToolSource(Protocol):
    """Where an env's tools come from (one entry of env.tools)."""

    def specs(self, task: dict | None = None) -> list[dict]:  # plain {"name", "description", "parameters"} specs
        ...

    def episode(self, task: dict) -> EpisodeTools:  # called once per episode
        ...


REGISTRY: dict[str, Tool] = {}


def tool(fn: Callable | None = None, *, isolated: bool = True, name: str | None = None):
    """Decorator: register a typed function as a tool."""

    def register(f: Callable) -> Callable:
        t = Tool.from_function(f, isolated=isolated, name=name)
        REGISTRY[t.name] = t
        return f

    return register(fn) if fn is not None else register


def lookup(name: str):
    """A registered or built-in Tool, or what the installed plugin of that name loads (a Tool,
    a function, a tool class); None if there is neither."""
    import tools.builtin  # noqa: F401  registers the built-in tools

    if name in REGISTRY:
        return REGISTRY[name]
    plugins = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return plugins[name].load() if name in plugins else None


def get_tool(name: str) -> Tool:
    """A registered tool, a built-in one, or one from an installed plugin."""
    obj = lookup(name)
    if obj is None:
        plugins = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise KeyError(f"tool {name!r} is unknown: registered tools are {sorted(REGISTRY)}, plugins "
                       f"({ENTRY_POINT_GROUP}) are {plugins}")
    found = obj if isinstance(obj, Tool) else Tool.from_function(obj)
    REGISTRY[name] = found
    return found
