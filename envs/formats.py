"""Public tool-calling datasets -> our task rows {messages, tools, ground_truth}.

Each converter takes one source row and returns a list of task rows (a multi-turn
conversation gives one task per assistant turn that calls tools, with the turns before it
as context), or raises ValueError saying what is wrong with the row.

    ours     {"messages", "tools", "ground_truth"}                    (README)
    toolace  Team-ACE/ToolACE: {"system": "...[tools as JSON]...", "conversations":
             [{"from": "user"|"assistant"|"tool", "value"}]}; calls are `[f(a=1), g(b="x")]`
    xlam     Salesforce/xlam-function-calling-60k: {"query", "tools": JSON string,
             "answers": JSON string}; parameters as {"arg": {"type", "description", "default"}}
    hermes   NousResearch/hermes-function-calling-v1: ChatML {"conversations": [{"from":
             "system"|"human"|"gpt"|"tool", "value"}]} with <tools> in the system turn and
             <tool_call>{...}</tool_call> in gpt turns
    bfcl     BFCL's JSON lines {"id", "question", "function", "ground_truth"?}
    openai   OpenAI / TRL SFT rows {"messages" (or TRL's "prompt" + "completion"), "tools"}
             whose assistant turns carry "tool_calls": [{"type": "function", "function":
             {"name", "arguments": JSON string or object}}]; each such turn becomes a task
             (the turns before it as context, its calls as ground truth). `ours` rows without
             ground_truth but with such turns are read this way too.

`ours` also takes TRL's prompt-only rows: a "prompt" column (a list of messages, or a string
for one user turn) stands for "messages". Tools may be plain {"name", "description",
"parameters"} or OpenAI/transformers' {"type": "function", "function": {...}}, in every
format; tasks carry the plain shape.

Tool schemas are normalised to JSON schema (python-style types such as `str`, `List[int]`,
`dict`, `float, optional` become JSON types), so Tool-N1's filter can validate the gold
calls against them.
"""

from __future__ import annotations

import ast
import json
import re

from envs.single_turn import calls_json

PY_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer", "float": "number",
            "number": "number", "double": "number", "bool": "boolean", "boolean": "boolean", "dict": "object",
            "object": "object", "list": "array", "array": "array", "tuple": "array", "set": "array", "null": "null",
            "none": "null", "nonetype": "null"}


def json_type(name: str) -> dict:
    """'List[str]' -> {"type": "array", "items": {"type": "string"}}; unknown -> {} (anything)."""
    name = re.sub(r",\s*optional\s*$", "", name.strip())  # "str, optional"
    m = re.fullmatch(r"(?:List|list|Sequence|Tuple|tuple|Set|set)\[(.+)\]", name)
    if m:
        return {"type": "array", "items": json_type(m.group(1))}
    if re.fullmatch(r"(?:Dict|dict)\[.+\]", name):
        return {"type": "object"}
    t = PY_TYPES.get(name.lower())
    return {"type": t} if t else {}


def normalize_schema(schema):
    """Python-style type names anywhere in a parameters schema -> JSON schema types."""
    if isinstance(schema, list):
        return [normalize_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: normalize_schema(v) for k, v in schema.items() if k not in ("type", "properties")}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: normalize_schema(v) for k, v in schema["properties"].items()}
    t = schema.get("type")
    if isinstance(t, str):
        converted = json_type(t)
        if converted:
            out.update({k: v for k, v in converted.items() if k not in out or k == "type"})
    elif t is not None:
        out["type"] = t
    return out


def unwrap_tool(tool):
    """OpenAI/transformers' {"type": "function", "function": {...}} -> the plain {...}; anything else as it is."""
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict) and "name" not in tool:
        return tool["function"]
    return tool


def normalize_tool(tool: dict) -> dict:
    if not isinstance(tool, dict):
        raise ValueError(f"a tool is a {type(tool).__name__}, not an object")
    tool = unwrap_tool(tool)
    if not isinstance(tool.get("name"), str):
        raise ValueError(f"a tool without a name: {json.dumps(tool)[:120]}")
    params = tool.get("parameters") or {"type": "object", "properties": {}}
    if "properties" not in params and "type" not in params:  # xLAM: {"arg": {"type", "description", "default"}}
        params = {"type": "object", "properties": params,
                  "required": [k for k, v in params.items() if isinstance(v, dict) and "default" not in v
                               and "optional" not in str(v.get("type", ""))]}
    params = normalize_schema(params)
    params.setdefault("type", "object")
    return {"name": tool["name"], "description": tool.get("description", ""), "parameters": params}


def from_ours(row: dict) -> list[dict]:
    """The row itself; TRL's "prompt" stands for "messages", and a row without ground_truth
    whose assistant turns carry tool_calls is read as an `openai` row."""
    messages = openai_messages(row)
    if "ground_truth" not in row and isinstance(messages, list) and any(
            isinstance(m, dict) and (m.get("tool_calls") or m.get("function_call")) for m in messages):
        return from_openai(row)
    if "messages" not in row and "prompt" in row:
        prompt = row["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        row = {("messages" if k == "prompt" else k): (messages if k == "prompt" else v) for k, v in row.items()}
    return [row]


def from_openai(row: dict) -> list[dict]:
    """One task per assistant turn with tool_calls, after a user turn: the turns before it are
    the context, its calls (arguments parsed) the ground truth. Earlier calls stay in the
    context as text in the answer format the model is trained on (`<tool_call>[...]</tool_call>`),
    so every message is a plain {"role", "content"}. Assistant turns without calls are context
    only, as in the other conversation formats."""
    messages = openai_messages(row)
    if not isinstance(messages, list):
        raise ValueError("an openai row needs 'messages' (or TRL's 'prompt' + 'completion'): a list of messages")
    if "tools" not in row:
        raise ValueError("an openai row needs a 'tools' column: the tools its calls are checked against")
    raw_tools = _json_field(row, "tools")
    if not isinstance(raw_tools, list):
        raise ValueError("key 'tools' must be a list of tools")
    tools = [normalize_tool(t) for t in raw_tools]
    tasks, history = [], []
    for m in messages:
        if not isinstance(m, dict):
            raise ValueError(f"a message is a {type(m).__name__}, not an object")
        role, content = m.get("role"), message_text(m.get("content"))
        calls = openai_calls(m)
        if role == "assistant" and calls:
            calls = [openai_call(c) for c in calls]
            if next((h["role"] for h in history if h["role"] != "system"), None) == "user":
                tasks.append({"messages": list(history), "tools": tools, "ground_truth": calls})
            text = f"<tool_call>{calls_json(calls)}</tool_call>"  # as gold answers write them
            history.append({"role": "assistant", "content": f"{content}\n{text}" if content.strip() else text})
        elif role in ROLES:
            history.append({"role": ROLES[role], "content": content})
        else:
            raise ValueError(f"a message has role {role!r}; expected system, developer, user, assistant or tool")
    if not tasks:
        raise ValueError("no assistant turn with tool_calls after a user turn")
    extras = {"category": row["category"]} if isinstance(row.get("category"), str) else {}
    if row.get("id") is not None:
        return [{**t, **extras, "id": str(row["id"]) + (f":{k}" if len(tasks) > 1 else "")} for k, t in enumerate(tasks)]
    return [{**t, **extras} for t in tasks]


def from_xlam(row: dict) -> list[dict]:
    tools = _json_field(row, "tools")
    answers = _json_field(row, "answers")
    return [{"messages": [{"role": "user", "content": row["query"]}], "tools": [normalize_tool(t) for t in tools],
             "ground_truth": [{"name": a["name"], "arguments": a.get("arguments", {})} for a in answers],
             **({"id": str(row["id"])} if "id" in row else {})}]


def from_toolace(row: dict) -> list[dict]:
    tools = [normalize_tool(t) for t in tools_in_text(row.get("system", ""), "JSON format that you can invoke:")]
    return conversation_tasks(row["conversations"], tools, parse_bracket_calls, {"user": "user", "assistant": "assistant"})


def from_hermes(row: dict) -> list[dict]:
    turns = row["conversations"]
    if "tools" in row and row["tools"]:
        raw_tools = _json_field(row, "tools")
    else:
        system = next((t["value"] for t in turns if t["from"] == "system"), "")
        blocks = [b.strip() for b in between(system, "<tools>", "</tools>") if b.strip()]
        if not blocks:  # (the prompt also names the tags, empty, in its instructions)
            raise ValueError("no <tools>...</tools> in the system turn and no 'tools' column")
        raw_tools = literal(blocks[0])
        raw_tools = raw_tools if isinstance(raw_tools, list) else [raw_tools]
    tools = [normalize_tool(t) for t in raw_tools]
    return conversation_tasks([t for t in turns if t["from"] != "system"], tools, parse_hermes_calls,
                              {"human": "user", "gpt": "assistant"})


def from_bfcl(row: dict) -> list[dict]:
    from envs import bfcl

    entry = {**row, "category": row.get("category") or re.sub(r"_\d+$", "", row["id"]),
             "possible_answer": row.get("ground_truth", row.get("possible_answer", []))}
    return [bfcl.to_task(entry)]


FORMATS = {"ours": from_ours, "toolace": from_toolace, "xlam": from_xlam, "hermes": from_hermes, "bfcl": from_bfcl,
           "openai": from_openai}


def convert(row: object, fmt: str) -> list[dict]:
    if fmt not in FORMATS:
        raise ValueError(f"data.format={fmt!r}: use one of {sorted(FORMATS)}")
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, expected an object ({fmt} format)")
    try:
        return FORMATS[fmt](row)
    except KeyError as e:
        raise ValueError(f"{fmt} row lacks key {e}") from None


# ---- pieces --------------------------------------------------------------------------------

def conversation_tasks(turns: list[dict], tools: list[dict], parse_calls, roles: dict[str, str]) -> list[dict]:
    """One task per assistant turn that calls tools; the turns before it are the context."""
    tasks, history = [], []
    for turn in turns:
        speaker, text = turn["from"], turn["value"]
        if roles.get(speaker) == "assistant":
            calls = parse_calls(text)
            if calls and history and history[0]["role"] == "user":
                tasks.append({"messages": list(history), "tools": tools, "ground_truth": calls})
            history.append({"role": "assistant", "content": text})
        elif roles.get(speaker) == "user":
            history.append({"role": "user", "content": text})
        else:  # tool / observation / function_response
            history.append({"role": "tool", "content": text})
    if not tasks:
        raise ValueError("no assistant turn with tool calls that parse")
    return tasks


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
         "function": "tool"}  # developer: OpenAI's newer name for system; function: its legacy tool result


def openai_messages(row: dict):
    """An OpenAI/TRL row's conversation: "messages", or TRL's "prompt" + "completion" lists."""
    if "messages" in row:
        return row["messages"]
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list):
        return prompt + (completion if isinstance(completion, list) else [])
    return None


def openai_calls(message: dict) -> list | None:
    """An assistant message's calls: "tool_calls", or OpenAI's legacy single "function_call"."""
    calls = message.get("tool_calls") or ([message["function_call"]] if message.get("function_call") else None)
    if calls is not None and not isinstance(calls, list):
        raise ValueError(f"tool_calls is a {type(calls).__name__}, not a list")
    return calls


def openai_call(call) -> dict:
    """{"type": "function", "function": {"name", "arguments"}} (or the inner object) -> {"name", "arguments": dict}."""
    fn = call.get("function") if isinstance(call, dict) and isinstance(call.get("function"), dict) else call
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"a tool call without a function name: {str(call)[:120]}")
    arguments = fn.get("arguments")
    if arguments is None or arguments == "":
        arguments = {}
    elif isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"the arguments of call {fn['name']!r} are not JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"the arguments of call {fn['name']!r} are a {type(arguments).__name__}, not an object")
    return {"name": fn["name"], "arguments": arguments}


def message_text(content) -> str:
    """A message's content as text: a string, None (an assistant turn with only calls), or
    OpenAI's content parts [{"type": "text", "text"}]; a tool result given as JSON is dumped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(p["text"] for p in content if isinstance(p.get("text"), str))
    if isinstance(content, (dict, list, int, float, bool)):
        return json.dumps(content, ensure_ascii=False)
    raise ValueError(f"a message's content is a {type(content).__name__}")


def parse_bracket_calls(text: str) -> list[dict] | None:
    """ToolACE's `[f(a=1, b="x"), g()]` -> calls; None if the text is not such a list."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.List) or not tree.elts or not all(isinstance(c, ast.Call) for c in tree.elts):
        return None
    calls = []
    for call in tree.elts:
        try:
            arguments = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
        except ValueError:
            return None
        calls.append({"name": ast.unparse(call.func), "arguments": arguments})
    return calls


def parse_hermes_calls(text: str) -> list[dict] | None:
    calls = []
    for block in between(text, "<tool_call>", "</tool_call>"):
        try:
            call = literal(block.strip())
        except ValueError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        arguments = call.get("arguments", {})
        calls.append({"name": call["name"], "arguments": literal(arguments) if isinstance(arguments, str) else arguments})
    return calls or None


def between(text: str, open_: str, close: str) -> list[str]:
    """The text between each `open_` and the first `close` after it, in order: what
    re.findall(open_ + "(.*?)" + close, text, re.DOTALL) finds, in linear time (that lazy regex
    rescans the rest of the text from every opener that has no closer)."""
    bodies, pos = [], 0
    while (start := text.find(open_, pos)) >= 0:
        end = text.find(close, start + len(open_))
        if end < 0:  # no closer after this opener, so none after any later one either
            break
        bodies.append(text[start + len(open_):end])
        pos = end + len(close)
    return bodies


def tools_in_text(text: str, marker: str) -> list[dict]:
    """The JSON list of tools that follows `marker` in a system prompt."""
    start = text.find("[", text.find(marker) if marker in text else 0)
    if start < 0:
        raise ValueError("no tool list found in the system prompt")
    try:
        tools, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        raise ValueError(f"the tool list in the system prompt is not JSON ({e.msg})") from None
    if not isinstance(tools, list):
        raise ValueError("the tools in the system prompt are not a list")
    return tools


def literal(text: str):
    """JSON, or failing that a Python literal (Hermes data mixes both)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"neither JSON nor a Python literal: {text[:80]!r}") from None


def _json_field(row: dict, key: str):
    value = row[key]
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"key {key!r} is not valid JSON ({e.msg})") from None
    return value
