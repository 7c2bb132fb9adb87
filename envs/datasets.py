"""Task rows from the synthetic generator, a local JSONL file, a dataset read through Arrow
(a hub id, a `save_to_disk` folder, a parquet/json/csv file: read_hub), in any of the formats
of envs/formats.py (ours, toolace, xlam, hermes, bfcl, openai), or BFCL's categories; and our
tasks out again as a TRL-ready dataset (to_trl).

Row format (one task): {"messages": [{"role", "content"}...], "tools": [JSON schema...],
"ground_truth": [{"name", "arguments"}...] or that list as a JSON string}; optional "id",
"category". Bad rows are skipped and counted (data.strict=false) or fail at once.

Arrow unifies nested objects: in a column of structs every object gets every key that any
row's object has, None where it had none (a tool's `properties` gain the other tools'
parameter names, a gold call's `arguments` the other calls' argument names). Rows read
through Arrow are undone before conversion (undo_arrow), by one rule: a None-valued key is
dropped everywhere, except in a call's arguments (an object with a string "name" and an
"arguments" object), where a None-valued argument is kept only when that tool's schema for
it explicitly admits null (type "null" or a list with it, nullable: true, an enum with null,
or an anyOf/oneOf branch that does) - for any other argument null fails the schema, so it
cannot be a gold value. Integer-valued floats (Arrow widens a column mixing 5 and 2.5 to
float) become ints where the schema says integer. Nothing else is touched: lists keep their
None items, string columns (ground_truth or tools as JSON text) are not unified and are read
exactly. The one loss: a call that omits an optional argument whose schema admits null
gains that argument as null; store ground_truth as a JSON string (to_trl does) to keep
exact nulls."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping
from pathlib import Path

from envs import synthetic
from envs.formats import normalize_tool, unwrap_tool
from rewards.parsing import parse_ground_truth

log = logging.getLogger(__name__)


def check_row(row: object) -> dict:
    """The row, normalised; raises ValueError saying which key is wrong and how."""
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, expected an object with messages, tools, ground_truth")
    for key, value in row.items():  # every key: extra ones (id, category, ...) travel with the task too
        try:  # a lone surrogate ("\\ud800") is valid JSON but crashes tokenisation and logging later
            json.dumps({key: value}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"key {key!r:.40} holds a lone surrogate or other text that is not valid Unicode; fix "
                             "or drop the row") from None
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"key {key!r:.40} is not plain JSON data ({type(e).__name__}: {str(e)[:80]})") from None
    missing = [k for k in ("messages", "tools", "ground_truth") if k not in row]
    if missing:
        raise ValueError(f"missing key(s) {missing}; a row needs messages, tools, ground_truth")
    tools = json.loads(row["tools"]) if isinstance(row["tools"], str) else row["tools"]
    tools = [unwrap_tool(t) for t in tools] if isinstance(tools, list) else tools  # OpenAI's shape -> plain
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        raise ValueError("key 'tools' must be a list of JSON schemas, each with a 'name' (plain or in OpenAI's "
                         "{'type': 'function', 'function': {...}})")
    messages = row["messages"]
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant", "tool") and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise ValueError("key 'messages' must be a non-empty list of {'role': system|user|assistant|tool, 'content': str}")
    truth = parse_ground_truth(row["ground_truth"])
    unknown = sorted({c["name"] for c in truth} - {t["name"] for t in tools})
    if unknown:
        raise ValueError(f"ground_truth calls {unknown}, which are not among the row's tools")
    category = row.get("category", "default")
    if not isinstance(category, str) or not category:  # metrics group and sort by it
        raise ValueError(f"key 'category' must be a non-empty string, not {category!r:.40}")
    return {**row, "tools": tools, "ground_truth": truth, "category": category}


class Filtered(ValueError):
    """A row dropped by the Tool-N1 filter (counted apart from malformed rows)."""


def tool_n1_filter(task: dict) -> None:
    """Tool-N1's data filter: every gold call must validate against its own tool's schema
    (rows whose ground truth does not parse already failed check_row)."""
    from jsonschema.exceptions import SchemaError

    from tools.validation import first_error, pattern_budget, schema_validator

    specs = {t["name"]: t.get("parameters") or {"type": "object"} for t in task["tools"]}
    for call in task["ground_truth"]:
        try:
            with pattern_budget():
                error = first_error(schema_validator(specs[call["name"]]), call["arguments"])
        except SchemaError as e:
            raise Filtered(f"filtered: the schema of {call['name']} is invalid ({e.message})") from None
        except Exception as e:  # noqa: BLE001  e.g. an unresolvable $ref: this row's problem, not the load's
            raise Filtered(f"filtered: the schema of {call['name']} cannot be used ({type(e).__name__}: {e})") from None
        if error is not None:
            where = ".".join(map(str, error.path)) or "arguments"
            raise Filtered(f"filtered: gold call {call['name']} does not validate: {where}: {error.message}")


class NotJSON(str):
    """read_jsonl's stand-in for a line that does not parse: clean reports it as a bad row."""


class Lines(list):
    """Rows read from a file, with where each came from (`path:line`) for error messages."""

    def __init__(self, rows: list, where: list[str]):
        super().__init__(rows)
        self.where = where


class ArrowRows(list):
    """Rows read through Arrow; `nested` names the columns that hold structs (which Arrow
    unified: clean undoes that with undo_arrow)."""

    def __init__(self, rows: list, nested: set[str] | frozenset[str]):
        super().__init__(rows)
        self.nested = frozenset(nested)


def undo_arrow(row: object, nested: frozenset[str] | set[str]) -> object:
    """The row without the None-valued keys Arrow's unification added (the rule is in the
    module docstring): top-level None values go (a column the row did not have), the struct
    columns in `nested` lose None-valued keys, and call arguments are pruned against the
    schema of the tool they call."""
    if not isinstance(row, dict):
        return row
    out = {k: v for k, v in row.items() if v is not None}
    for key in ("tools", "function"):  # ours/openai/xlam/hermes; bfcl
        if key in out and key in nested:
            out[key] = _drop_nulls(out[key], {})
    specs = tool_parameters(out.get("tools", out.get("function")))
    return {k: _drop_nulls(v, specs) if k in nested else v for k, v in out.items()}


def _drop_nulls(value, specs: dict[str, dict]):
    if isinstance(value, list):
        return [_drop_nulls(v, specs) for v in value]
    if not isinstance(value, dict):
        return value
    call = isinstance(value.get("name"), str) and isinstance(value.get("arguments"), dict)
    return {k: prune_arguments(v, specs.get(value["name"])) if call and k == "arguments" else _drop_nulls(v, specs)
            for k, v in value.items() if v is not None}


def tool_parameters(tools) -> dict[str, dict]:
    """name -> parameters JSON schema of a row's tools (either shape, a list or its JSON
    string, python-style types normalised); tools that do not read are left out."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except (ValueError, RecursionError):
            return {}
    specs = {}
    for tool in tools if isinstance(tools, list) else []:
        try:
            tool = normalize_tool(tool)
        except Exception:  # noqa: BLE001  a bad tool is check_row's to report, not this lookup's
            continue
        specs[tool["name"]] = tool["parameters"]
    return specs


def prune_arguments(value, schema):
    """Call arguments (or a value inside them) without Arrow's None-valued keys: a None is
    kept only where `schema` admits null explicitly; integer-valued floats become ints where
    the schema says integer."""
    schema = schema if isinstance(schema, dict) else {}
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {k: prune_arguments(v, props.get(k, extra)) for k, v in value.items()
                if v is not None or admits_null(props.get(k, extra))}
    if isinstance(value, list):
        return [prune_arguments(v, schema.get("items")) for v in value]
    if isinstance(value, float) and value.is_integer() and _types(schema) & {"integer", "number"} == {"integer"}:
        return int(value)
    return value


def _types(schema: dict) -> set:
    t = schema.get("type")
    return {t} if isinstance(t, str) else {x for x in t if isinstance(x, str)} if isinstance(t, list) else set()


def admits_null(schema) -> bool:
    """Whether a JSON schema names null as a value: type null (or a list with it), OpenAPI's
    nullable, an enum with null, or an anyOf/oneOf branch that does."""
    if not isinstance(schema, dict):
        return False
    if "null" in _types(schema) or schema.get("nullable") is True:
        return True
    if isinstance(schema.get("enum"), list) and None in schema["enum"]:
        return True
    return any(admits_null(s) for key in ("anyOf", "oneOf") if isinstance(schema.get(key), list) for s in schema[key])


def clean(rows: list, source: str, strict: bool, fmt: str = "ours", filter_: bool = False,
          max_skipped_share: float = 1.0) -> list[dict]:
    """Converts rows from `fmt`, checks them, and (filter_) drops gold calls that do not
    validate; bad rows are counted and the first reasons logged, or fail (strict). A row
    that makes a converter or a check raise anything is a bad row named by file and line
    (Lines from read_jsonl) or by its index, never an aborted load."""
    from envs.formats import convert

    where = getattr(rows, "where", None) or [f"{source} row {i}" for i in range(len(rows))]
    nested = getattr(rows, "nested", None)  # ArrowRows: undo Arrow's unification first
    good, bad, filtered = [], [], 0
    for i, row in enumerate(rows):
        try:
            if isinstance(row, NotJSON):
                raise ValueError(row)
            if nested is not None:
                row = undo_arrow(row, nested)
            tasks = [check_row(t) for t in convert(row, fmt)]
            if filter_:
                for t in tasks:
                    tool_n1_filter(t)
            good += [{"id": f"{source}:{i}" + (f":{k}" if len(tasks) > 1 else ""), **t} for k, t in enumerate(tasks)]
        except Exception as e:  # noqa: BLE001  any odd row: counted and named, never a crash far from it
            reason = str(e) if isinstance(e, ValueError) else f"{fmt} row could not be read ({type(e).__name__}: {e})"
            if strict:
                raise ValueError(f"{where[i]}: {reason} (data.strict=true; set it false to skip bad rows)") from None
            bad.append(f"{where[i]}: {reason}")
            filtered += isinstance(e, Filtered)
    if bad:
        log.warning("%s: skipped %d of %d rows (%d by the Tool-N1 filter); first: %s", source, len(bad), len(rows),
                    filtered, "; ".join(bad[:3]))
    if not good:
        raise ValueError(f"{source}: no usable rows ({len(bad)} bad); first problems: {bad[:3]}")
    if len(bad) > max_skipped_share * len(rows):
        raise ValueError(f"{source}: {len(bad)} of {len(rows)} rows were skipped ({filtered} by the Tool-N1 filter), more "
                         f"than data.max_skipped_share={max_skipped_share}: the data or data.format is likely wrong. "
                         f"First problems: {'; '.join(bad[:3])}. Fix the rows, or raise data.max_skipped_share")
    return good


def read_jsonl(path: str) -> Lines:
    """One row per line, split on newlines only: a row may contain U+2028 and other
    characters that str.splitlines() would cut at. Lines that are not JSON become bad rows
    (a string naming the line), so clean counts them or fails on them."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"data.path={path}: no such file")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte {data[e.start]:#x} at offset {e.start}); JSONL must be "
                         "UTF-8: re-encode the file, e.g. iconv -f latin1 -t utf-8") from None
    rows, where = [], []
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                rows.append(NotJSON(f"not JSON ({e.msg} at column {e.colno})"))
            except (ValueError, RecursionError) as e:  # an int of over 4300 digits; nesting deeper than the stack
                rows.append(NotJSON(f"not readable JSON ({type(e).__name__}: {str(e)[:80]})"))
            where.append(f"{path}:{n}")
    return Lines(rows, where)


ARROW_FILES = {".parquet": "parquet", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def read_hub(path: str, split: str) -> list:
    """Rows of a hub dataset id, a local `save_to_disk` folder (a Dataset, or a DatasetDict:
    `split` picks one), a local folder of data files, or one local file (.parquet, .json,
    .csv, .arrow; a .jsonl file is read as read_jsonl reads it, line by line). Rows that came
    through Arrow are ArrowRows, which clean undoes Arrow's unification on."""
    import datasets

    local = Path(path)
    if local.is_dir() and (local / "dataset_dict.json").exists():
        splits = datasets.load_from_disk(str(local))
        if split not in splits:
            raise ValueError(f"{path}: a save_to_disk DatasetDict without split {split!r} (data.split); "
                             f"it has {sorted(splits)}")
        return arrow_rows(splits[split])
    if local.is_dir() and (local / "state.json").exists() and (local / "dataset_info.json").exists():
        return arrow_rows(datasets.load_from_disk(str(local)))
    if not local.exists() and local.suffix in (".jsonl", *ARROW_FILES):
        raise FileNotFoundError(f"data.path={path}: no such file")
    if local.is_file():
        if local.suffix == ".jsonl":
            return read_jsonl(path)
        if local.suffix not in ARROW_FILES:
            raise ValueError(f"data.path={path}: a data file must be .jsonl, {', '.join(ARROW_FILES)}; or give a hub "
                             "dataset id or a save_to_disk folder")
        return arrow_rows(datasets.load_dataset(ARROW_FILES[local.suffix], data_files=str(local), split="train"))
    return arrow_rows(datasets.load_dataset(path, split=split))


def arrow_rows(dataset) -> ArrowRows:
    """A datasets.Dataset's rows, with the names of its columns that hold structs."""
    import pyarrow as pa

    def nested(t) -> bool:
        if pa.types.is_struct(t):
            return True
        value = getattr(t, "value_type", None) or getattr(t, "item_type", None)  # list types; map
        return isinstance(value, pa.DataType) and nested(value)

    return ArrowRows(list(dataset), {f.name for f in dataset.data.schema if nested(f.type)})


def load_tasks(cfg) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out eval rows)."""
    if cfg.name == "synthetic":
        return synthetic.train_eval_split(cfg.n_train, cfg.n_eval, cfg.seed, list(cfg.categories), cfg.weights,
                                          cfg.builtin_tools, cfg.bfcl_disjoint, cfg.typed_tools,
                                          cfg.irrelevance_near_miss)
    if cfg.name == "bfcl_multi_turn":  # synthetic tasks over BFCL's API classes (never BFCL's test items)
        from envs import bfcl_multi_turn

        return bfcl_multi_turn.train_eval_split(cfg.n_train, cfg.n_eval, cfg.seed)
    if cfg.name == "bfcl":  # BFCL's own categories from the bfcl-eval package: for evaluation, not training
        from envs import bfcl

        rows = [t for c in cfg.categories for t in clean(bfcl.load_category(c), f"bfcl/{c}", cfg.strict, "bfcl")]
        return [], rows
    read = {"jsonl": lambda p: read_jsonl(p), "hub": lambda p: read_hub(p, cfg.split)}.get(cfg.name)
    if read is None:
        raise ValueError(f"data.name={cfg.name!r}: use synthetic, bfcl_multi_turn, jsonl, hub or bfcl")
    if not cfg.path:
        raise ValueError(f"data.name={cfg.name} needs data.path")
    rows = clean(read(cfg.path), cfg.path, cfg.strict, cfg.format, cfg.filter, cfg.max_skipped_share)
    if cfg.eval_path:
        return rows, clean(read(cfg.eval_path), cfg.eval_path, cfg.strict, cfg.format, cfg.filter, cfg.max_skipped_share)
    random.Random(cfg.seed).shuffle(rows)
    if len(rows) <= cfg.n_eval:
        raise ValueError(f"{cfg.path}: {len(rows)} rows cannot spare data.n_eval={cfg.n_eval} for eval; lower it or set data.eval_path")
    return rows[cfg.n_eval:], rows[: cfg.n_eval]


def to_trl(tasks: list[dict], system_prompt: str | None = None):
    """Our tasks as a TRL-ready datasets.Dataset, one row per task, with columns

        prompt        the task's messages: TRL's conversational prompt-only shape
        tools         the tools in OpenAI/transformers' shape [{"type": "function", "function":
                      {"name", "description", "parameters"}}], as a JSON string
        ground_truth  the gold calls [{"name", "arguments"}], as a JSON string
        id, category  strings

    tools and ground_truth are JSON text so that Arrow does not unify them (see the module
    docstring): the rows read back exactly, nulls included. TRL's SFT, DPO, KTO and reward
    trainers json.loads a string `tools` column themselves; elsewhere pass
    `json.loads(row["tools"])` to `tokenizer.apply_chat_template(..., tools=...)`.

    In TRL's GRPOTrainer every column but `prompt` reaches each reward function as a keyword
    argument, and our rewards read these columns unchanged: `rewards.tool_n1.tool_n1_reward`
    parses `ground_truth` from its JSON string, `rewards.schema.schema_validity_reward` reads
    `tools` in this shape, and both take TRL's conversational completions:

        GRPOTrainer(model, reward_funcs=[tool_n1_reward], train_dataset=to_trl(tasks, TOOL_N1_SYSTEM), ...)

    GRPOTrainer (TRL 1.16) renders each prompt with the trainer's own `tools` only, so give
    `system_prompt` (e.g. envs.single_turn.TOOL_N1_SYSTEM; `{tools}` in it becomes the task's
    tools) to put every row's tools and the answer format in the prompt, as our single-turn
    env does (system messages of the task are then replaced). Without it `prompt` is the
    task's messages as they are, and loading the dataset back with our loader
    (`data=hub data.path=<save_to_disk folder, parquet file or hub id>`) gives the same tasks:
    messages, tools, ground_truth, id, category."""
    import datasets

    if not tasks:
        raise ValueError("to_trl: no tasks to export")
    rows = []
    for task in tasks:
        messages = task["messages"]
        if system_prompt is not None:
            from envs.single_turn import SingleTurnEnv

            messages = SingleTurnEnv(None, system_prompt).reset(task)
        tools = json.loads(task["tools"]) if isinstance(task["tools"], str) else task["tools"]
        tools = [{"type": "function", "function": unwrap_tool(t)} for t in tools]
        rows.append({"prompt": messages, "tools": json.dumps(tools, ensure_ascii=False),
                     "ground_truth": json.dumps(parse_ground_truth(task["ground_truth"]), ensure_ascii=False),
                     "id": str(task.get("id", len(rows))), "category": str(task.get("category", "default"))})
    return datasets.Dataset.from_list(rows)


def check_stratify_weights(weights) -> dict[str, float]:
    """data.stratify_weights as {category: weight}: a mapping of finite numbers >= 0 (None: {})."""
    if weights is None:
        return {}
    how = "give a mapping such as data.stratify_weights='{irrelevance: 2}' (categories left out weigh 1)"
    if not isinstance(weights, Mapping):
        raise ValueError(f"data.stratify_weights={weights}: {how}")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"data.stratify_weights.{name}={w}: every weight must be finite and >= 0; {how}")
    return {str(k): float(v) for k, v in weights.items()}


def check_adaptive_floor(floor) -> None:
    """data.adaptive_floor: null (fixed shares) or a finite number >= 0."""
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float))
                              or not math.isfinite(floor) or floor < 0):
        raise ValueError(f"data.adaptive_floor={floor}: use a finite number >= 0 (0.5: a category it never fails "
                         "keeps a third of the share of one it always fails), or null for fixed shares")


class TaskStream:
    """Batches of tasks in a seeded order, reshuffled every epoch; its position is part of
    the checkpoint so a resumed run sees exactly the batches it would have seen. With
    stratify, the order cycles through the rows' categories (each shuffled, the categories'
    order reshuffled every round), so every batch holds each category's share. With shares
    (data.stratify_weights, {category: weight}, unnamed categories 1), category c takes
    weight_c / sum of the weights of every batch whatever its count of rows. With an adaptive
    floor (data.adaptive_floor) the shares follow the failures (AdaptiveShares, fed by observe)."""

    def __init__(self, rows: list[dict], batch_size: int, seed: int, stratify: bool = False,
                 shares: dict[str, float] | None = None, adaptive_floor: float | None = None):
        if not rows:
            raise ValueError("no training tasks (data.name=bfcl is for evaluation: python -m rl.eval data=bfcl)")
        self.rows, self.batch_size, self.seed, self.stratify = rows, batch_size, seed, stratify or bool(shares)
        self.shares = check_stratify_weights(shares)
        if self.shares:
            present = {str(r.get("category")) for r in rows}
            unknown = sorted(set(self.shares) - present)
            if unknown:
                raise ValueError(f"data.stratify_weights names {unknown}, which no training row has as its category "
                                 f"(the categories are {sorted(present)}): name only those, or data.stratify_weights=null "
                                 "for equal shares")
            if not any(self.shares.get(c, 1.0) > 0 for c in present):
                raise ValueError(f"data.stratify_weights={self.shares}: at least one category must keep a weight "
                                 "above 0 (unnamed categories weigh 1)")
        self.epoch, self.position = 0, 0
        self.order = self._order()
        self.adaptive = AdaptiveShares(rows, seed, self.shares, adaptive_floor) if adaptive_floor is not None else None

    def _order(self) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.rows)))
        rng.shuffle(order)
        if not self.stratify:
            return order
        by_category: dict[str, list[int]] = {}
        for i in order:
            by_category.setdefault(str(self.rows[i].get("category")), []).append(i)
        if self.shares:
            return _weighted_interleave(by_category, self.shares, len(order))
        queues, out = [by_category[k] for k in sorted(by_category)], []
        for r in range(max(map(len, queues))):
            round_ = [q[r] for q in queues if r < len(q)]
            rng.shuffle(round_)
            out += round_
        return out

    def next_batch(self) -> list[dict]:
        if self.adaptive is not None:
            return [self.adaptive.pick() for _ in range(self.batch_size)]
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self.order):
                self.epoch, self.position = self.epoch + 1, 0
                self.order = self._order()
            batch.append(self.rows[self.order[self.position]])
            self.position += 1
        return batch

    def observe(self, categories: list[str], successes: list[float]) -> None:
        """The last batch's results (one success in [0, 1] per completion, with its task's
        category); only adaptive shares use them."""
        if self.adaptive is not None:
            self.adaptive.observe(categories, successes)

    def metrics(self) -> dict[str, float]:
        """data/share/<category>: each category's share of the next batch (adaptive shares only)."""
        return {f"data/share/{k}": v for k, v in self.adaptive.shares().items()} if self.adaptive is not None else {}

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "position": self.position}
        if self.adaptive is not None:
            state["adaptive"] = self.adaptive.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.order = self._order()
        if self.adaptive is not None and "adaptive" in state:
            self.adaptive.load_state_dict(state["adaptive"])


class AdaptiveShares:
    """Category shares that follow the failures (data.adaptive_floor): category c takes
    weight_c * (floor + fail_c) / sum over categories of every batch, where fail_c is an
    exponential moving average (half from the last batch that held c) of 1 - the success of c's
    completions, starting at 0.5 (the plain weights). A category the policy is losing gets more of
    the next batches, so neither answering `[]` everywhere nor calling everywhere can take over
    unopposed. Picks are a smooth weighted round-robin over the current shares; each category's
    rows come in a seeded order, reshuffled each pass. Its state is part of the checkpoint."""

    DECAY = 0.5

    def __init__(self, rows: list[dict], seed: int, weights: dict[str, float], floor: float):
        check_adaptive_floor(floor)
        self.rows, self.seed, self.floor = rows, seed, float(floor)
        self.by_category: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            self.by_category.setdefault(str(r.get("category")), []).append(i)
        self.names = [k for k in sorted(self.by_category) if weights.get(k, 1.0) > 0]
        self.weights = {k: weights.get(k, 1.0) for k in self.names}
        self.fail = dict.fromkeys(self.names, 0.5)
        self.credit = dict.fromkeys(self.names, 0.0)
        self.taken = dict.fromkeys(self.names, 0)
        self._pass: dict[str, tuple[int, list[int]]] = {}  # category -> (pass, its rows' order in that pass)

    def shares(self) -> dict[str, float]:
        w = {k: self.weights[k] * (self.floor + self.fail[k]) for k in self.names}
        total = sum(w.values())
        return {k: v / total for k, v in w.items()} if total > 0 else {k: 1 / len(w) for k in w}

    def pick(self) -> dict:
        k = _most_owed(self.credit, self.shares(), 1.0)
        n, i = len(self.by_category[k]), self.taken[k]
        if self._pass.get(k, (None,))[0] != i // n:  # the category's next pass: its rows reshuffled
            order = list(self.by_category[k])
            random.Random(f"{self.seed}/{k}/{i // n}").shuffle(order)
            self._pass[k] = (i // n, order)
        self.taken[k] += 1
        return self.rows[self._pass[k][1][i % n]]

    def observe(self, categories: list[str], successes: list[float]) -> None:
        seen: dict[str, list[float]] = {}
        for c, v in zip(categories, successes):
            if c in self.fail and v == v:  # NaN: the function did not apply
                seen.setdefault(c, []).append(min(max(float(v), 0.0), 1.0))
        for c, values in seen.items():
            self.fail[c] = (1 - self.DECAY) * self.fail[c] + self.DECAY * (1 - sum(values) / len(values))

    def state_dict(self) -> dict:
        return {"fail": dict(self.fail), "credit": dict(self.credit), "taken": dict(self.taken)}

    def load_state_dict(self, state: dict) -> None:
        self.fail, self.credit, self.taken = dict(state["fail"]), dict(state["credit"]), dict(state["taken"])


def _weighted_interleave(queues: dict[str, list[int]], weights: dict[str, float], n: int) -> list[int]:
    """n row indices in which category c takes weight_c / sum(weights) of every stretch (smooth
    weighted round-robin: each pick goes to the category most owed; unnamed categories weigh 1).
    A category's own (shuffled) rows repeat when its share outruns them within the epoch."""
    w = {k: weights.get(k, 1.0) for k in sorted(queues) if weights.get(k, 1.0) > 0}
    names = list(w)
    total, credit, taken, out = sum(w.values()), dict.fromkeys(names, 0.0), dict.fromkeys(names, 0), []
    for _ in range(n):
        k = _most_owed(credit, w, total)
        out.append(queues[k][taken[k] % len(queues[k])])
        taken[k] += 1
    return out


def _most_owed(credit: dict[str, float], weights: dict[str, float], total: float) -> str:
    """One step of smooth weighted round-robin: every category is owed its weight, the most owed
    (ties: the first in `weights`' order) is picked and pays back `total` (the sum of the weights)."""
    for k in weights:
        credit[k] += weights[k]
    k = max(weights, key=credit.__getitem__)
    credit[k] -= total
    return k
