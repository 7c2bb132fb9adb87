"""Task rows from the synthetic generator, a local JSONL file, a hub dataset (in any of
the formats of envs/formats.py: ours, toolace, xlam, hermes, bfcl), or BFCL's categories.

Row format (one task): {"messages": [{"role", "content"}...], "tools": [JSON schema...],
"ground_truth": [{"name", "arguments"}...] or that list as a JSON string}; optional "id",
"category". Bad rows are skipped and counted (data.strict=false) or fail at once."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from envs import synthetic
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
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        raise ValueError("key 'tools' must be a list of JSON schemas, each with a 'name'")
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


def clean(rows: list, source: str, strict: bool, fmt: str = "ours", filter_: bool = False,
          max_skipped_share: float = 1.0) -> list[dict]:
    """Converts rows from `fmt`, checks them, and (filter_) drops gold calls that do not
    validate; bad rows are counted and the first reasons logged, or fail (strict). A row
    that makes a converter or a check raise anything is a bad row named by file and line
    (Lines from read_jsonl) or by its index, never an aborted load."""
    from envs.formats import convert

    where = getattr(rows, "where", None) or [f"{source} row {i}" for i in range(len(rows))]
    good, bad, filtered = [], [], 0
    for i, row in enumerate(rows):
        try:
            if isinstance(row, NotJSON):
                raise ValueError(row)
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


def read_hub(dataset_id: str, split: str) -> list:
    import datasets

    return list(datasets.load_dataset(dataset_id, split=split))


def load_tasks(cfg) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out eval rows)."""
    if cfg.name == "synthetic":
        return synthetic.train_eval_split(cfg.n_train, cfg.n_eval, cfg.seed, list(cfg.categories), cfg.weights,
                                          cfg.builtin_tools, cfg.bfcl_disjoint, cfg.typed_tools)
    if cfg.name == "bfcl":  # BFCL's own categories from the bfcl-eval package: for evaluation, not training
        from envs import bfcl

        rows = [t for c in cfg.categories for t in clean(bfcl.load_category(c), f"bfcl/{c}", cfg.strict, "bfcl")]
        return [], rows
    read = {"jsonl": lambda p: read_jsonl(p), "hub": lambda p: read_hub(p, cfg.split)}.get(cfg.name)
    if read is None:
        raise ValueError(f"data.name={cfg.name!r}: use synthetic, jsonl, hub or bfcl")
    if not cfg.path:
        raise ValueError(f"data.name={cfg.name} needs data.path")
    rows = clean(read(cfg.path), cfg.path, cfg.strict, cfg.format, cfg.filter, cfg.max_skipped_share)
    if cfg.eval_path:
        return rows, clean(read(cfg.eval_path), cfg.eval_path, cfg.strict, cfg.format, cfg.filter, cfg.max_skipped_share)
    random.Random(cfg.seed).shuffle(rows)
    if len(rows) <= cfg.n_eval:
        raise ValueError(f"{cfg.path}: {len(rows)} rows cannot spare data.n_eval={cfg.n_eval} for eval; lower it or set data.eval_path")
    return rows[cfg.n_eval:], rows[: cfg.n_eval]


class TaskStream:
    """Batches of tasks in a seeded order, reshuffled every epoch; its position is part of
    the checkpoint so a resumed run sees exactly the batches it would have seen. With
    stratify, the order cycles through the rows' categories (each shuffled, the categories'
    order reshuffled every round), so every batch holds each category's share."""

    def __init__(self, rows: list[dict], batch_size: int, seed: int, stratify: bool = False):
        if not rows:
            raise ValueError("no training tasks (data.name=bfcl is for evaluation: python -m rl.eval data=bfcl)")
        self.rows, self.batch_size, self.seed, self.stratify = rows, batch_size, seed, stratify
        self.epoch, self.position = 0, 0
        self.order = self._order()

    def _order(self) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.rows)))
        rng.shuffle(order)
        if not self.stratify:
            return order
        by_category: dict[str, list[int]] = {}
        for i in order:
            by_category.setdefault(str(self.rows[i].get("category")), []).append(i)
        queues, out = [by_category[k] for k in sorted(by_category)], []
        for r in range(max(map(len, queues))):
            round_ = [q[r] for q in queues if r < len(q)]
            rng.shuffle(round_)
            out += round_
        return out

    def next_batch(self) -> list[dict]:
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self.order):
                self.epoch, self.position = self.epoch + 1, 0
                self.order = self._order()
            batch.append(self.rows[self.order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.order = self._order()
