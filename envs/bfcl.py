"""BFCL (Berkeley Function Calling Leaderboard) data as our tasks: the single-turn categories
that the `bfcl-eval` package (extra `bfcl`) ships, each entry rendered as a task row (first
user turn, tools as JSON schema, the first acceptable value of each argument as ground truth).
Scoring with BFCL's own checker is in rl/bfcl.py. BFCL_PROJECT_ROOT is pointed at a writable
folder, as the package requires."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

SINGLE_TURN = ["simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
               "irrelevance", "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
               "live_irrelevance"]
DEFAULT_CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"]
INSTALL_HINT = ("BFCL needs the `bfcl-eval` package: pip install --no-deps bfcl-eval && pip install filelock tenacity "
                "tree_sitter==0.21.3 tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4 mpmath "
                "(or pip install -e '.[bfcl]')")
# BFCL's parameter types -> JSON schema, for the prompt (BFCL's own FC handlers do the same)
JSON_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}


def language(category: str) -> str:
    if "javascript" in category:
        return "javascript"
    return "java" if "java" in category else "python"


@lru_cache(maxsize=1)
def package_dir() -> Path:
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(Path.home() / ".cache" / "toolcall-rl" / "bfcl"))
    Path(os.environ["BFCL_PROJECT_ROOT"]).mkdir(parents=True, exist_ok=True)
    try:
        import bfcl_eval
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return Path(bfcl_eval.__file__).parent


def load_category(category: str) -> list[dict]:
    """BFCL's entries for one single-turn category, each with its possible answer."""
    if category not in SINGLE_TURN:
        raise ValueError(f"BFCL category {category!r} is not supported here: use one of {SINGLE_TURN}")
    data = package_dir() / "data"
    entries = read_json_lines(data / f"BFCL_v4_{category}.json")
    answers_file = data / "possible_answer" / f"BFCL_v4_{category}.json"
    answers = {a["id"]: a["ground_truth"] for a in read_json_lines(answers_file)} if answers_file.exists() else {}
    for e in entries:
        e["possible_answer"] = answers.get(e["id"], [])
        e["category"] = category
    return entries


def read_json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def to_task(entry: dict) -> dict:
    """A BFCL entry as our task row: first user turn, tools as JSON schema, and the first
    acceptable value of each argument as ground truth (omitting optional ones)."""
    lang = language(entry["category"])
    return {
        "id": entry["id"], "category": entry["category"], "messages": entry["question"][0],
        "tools": [tool_schema(f, lang) for f in entry["function"]],
        "ground_truth": [render_call(call, entry["function"], lang) for call in entry["possible_answer"]],
    }


def tool_schema(function: dict, lang: str) -> dict:
    params = json.loads(json.dumps(function["parameters"]))
    for arg, spec in params.get("properties", {}).items():
        if lang != "python":  # BFCL's FC handlers: Java/JS arguments are source code in a string
            description = f'{spec.get("description", "")} This is {lang.capitalize()} {spec["type"]} type ' \
                          "parameter in string representation."
            params["properties"][arg] = {"type": "string", "description": description}
    return {"name": function["name"], "description": function.get("description", ""), "parameters": _json_types(params)}


def _json_types(schema):
    if isinstance(schema, dict):
        out = {k: _json_types(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = JSON_TYPES.get(out["type"], out["type"])
        return out
    if isinstance(schema, list):
        return [_json_types(v) for v in schema]
    return schema


def render_call(call: dict, functions: list[dict], lang: str) -> dict:
    """{"f": {"arg": [acceptable values]}} -> {"name": "f", "arguments": {...}} with the first
    acceptable value; "" among them marks an optional argument, which is left out."""
    (name, params), = call.items()
    spec = next((f for f in functions if f["name"] == name), {"parameters": {"properties": {}}})
    props, required = spec["parameters"].get("properties", {}), spec["parameters"].get("required", [])
    arguments = {}
    for arg, options in params.items():
        values = [v for v in options if v != ""]
        if not values or ("" in options and arg not in required):  # a few BFCL rows mark required args optional
            continue
        arguments[arg] = render_value(values[0], props.get(arg, {}), lang)
    return {"name": name, "arguments": arguments}


def render_value(value, spec: dict, lang: str):
    """A gold value as the model should write it: as is for Python; for Java/JS the source
    text that BFCL's type converter turns back into the value."""
    if lang == "python":
        return dict_options_first(value)
    t = spec.get("type", "String")
    if lang == "java":
        return java_source(value, t, spec.get("items", {}).get("type"))
    return js_source(value, t)


def dict_options_first(value):
    """Nested dict answers list options per key too: {"k": [v1, v2]} -> {"k": v1}."""
    if isinstance(value, dict):
        return {k: dict_options_first(v[0]) if isinstance(v, list) and v else dict_options_first(v)
                for k, v in value.items() if not (isinstance(v, list) and "" in v)}
    if isinstance(value, list):
        return [dict_options_first(v) for v in value]
    return value


def java_source(value, t: str, nested: str | None = None) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if t == "long":
        return f"{value}L"
    if t == "float":
        return f"{value}f"
    if t == "ArrayList" and isinstance(value, list):  # the converter strips quotes of String items
        items = ", ".join(f'"{v}"' if nested == "String" else java_value(v) if nested in (None, "any")
                          else java_source(v, nested) for v in value)
        return f"new ArrayList<>(Arrays.asList({items}))"
    if t == "Array" and isinstance(value, list):  # ... and keeps them for arrays
        return f"new {nested or 'Object'}[]{{{', '.join(str(v) if nested else java_value(v) for v in value)}}}"
    if t == "HashMap" and isinstance(value, dict):
        puts = " ".join(f'put("{k}", {java_value(first(v))});' for k, v in value.items())
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def java_value(v) -> str:
    """An untyped Java literal, as BFCL's parse_java_value reads it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else str(v)


def first(options):
    return options[0] if isinstance(options, list) and options else options


def js_source(value, t: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if t == "Bigint":
        return f"{value}n"
    if isinstance(value, (list, dict)):
        return json.dumps(dict_options_first(value))
    return str(value)
