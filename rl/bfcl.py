"""BFCL (Berkeley Function Calling Leaderboard), scored by BFCL's own AST checker.

The `bfcl-eval` package (extra `bfcl`) ships the data and the checker. Its checker module
imports a table of model handlers that pulls vendor SDKs; only one name of it is used
(MODEL_CONFIG_MAPPING, to ask whether a model rewrites "." in function names), so a stand-in
module answering "no" is installed before the import. BFCL_PROJECT_ROOT is pointed at a
writable folder, as the package requires.

Scoring follows BFCL's eval runner: a completion is decoded to `[{"func": {"arg": value}}]`
(here by our Tool-N1 parser), then
- irrelevance categories: correct iff it holds no call (a completion that does not decode
  counts as no call, as in BFCL);
- all others: `ast_checker(functions, decoded, possible_answer, language, category, model)`;
  a completion that does not decode is wrong.
"""

from __future__ import annotations

import json
import os
import sys
import types
from functools import lru_cache
from pathlib import Path

from rewards.parsing import parse

SINGLE_TURN = ["simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
               "irrelevance", "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
               "live_irrelevance"]
DEFAULT_CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"]
MODEL_NAME = "toolcall-rl"
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


@lru_cache(maxsize=1)
def checker():
    """BFCL's ast_checker and Language enum, imported without the model-handler table."""
    package_dir()
    if "bfcl_eval.constants.model_config" not in sys.modules:
        stand_in = types.ModuleType("bfcl_eval.constants.model_config")

        class _NoRewrite(dict):
            def __missing__(self, key):
                return types.SimpleNamespace(underscore_to_dot=False)

        stand_in.MODEL_CONFIG_MAPPING = _NoRewrite()
        sys.modules["bfcl_eval.constants.model_config"] = stand_in
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    return ast_checker, Language


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


def decode(completion: str) -> list[dict] | None:
    """Our completion -> BFCL's decoded form [{"func": {"arg": value}}]; None if it does not parse."""
    parsed = parse(completion, "tool_n1", lenient=True)
    if parsed.calls is None:
        return None
    return [{c["name"]: c["arguments"]} for c in parsed.calls]


def score_entry(entry: dict, completion: str) -> dict:
    """{"valid": bool, "error_type": str | None} as BFCL's runner would give it."""
    category = entry["category"]
    decoded = decode(completion)
    if "irrelevance" in category:
        has_call = bool(decoded) and any(decoded)
        return {"valid": not has_call, "error_type": "irrelevance_error:decoder_success" if has_call else None}
    if decoded is None:
        return {"valid": False, "error_type": "ast_decoder:decoder_failed"}
    ast_checker, Language = checker()
    result = ast_checker(entry["function"], decoded, entry["possible_answer"], Language[language(category).upper()],
                         category, MODEL_NAME)
    return {"valid": bool(result["valid"]), "error_type": None if result["valid"] else result.get("error_type")}


def score(category: str, predictions: dict[str, str], entries: list[dict] | None = None) -> dict:
    """Accuracy over every entry of the category; ids without a prediction count as wrong."""
    entries = entries if entries is not None else load_category(category)
    results = [score_entry(e, predictions[e["id"]]) if e["id"] in predictions
               else {"valid": False, "error_type": "missing_prediction"} for e in entries]
    return summarize(category, results)


def summarize(category: str, results: list[dict]) -> dict:
    """{"category", "n", "correct", "accuracy", "errors": {error_type: count}} of per-entry results."""
    correct = sum(r["valid"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        if r["error_type"]:
            errors[r["error_type"]] = errors.get(r["error_type"], 0) + 1
    return {"category": category, "n": len(results), "correct": correct,
            "accuracy": correct / len(results) if results else float("nan"), "errors": errors}
