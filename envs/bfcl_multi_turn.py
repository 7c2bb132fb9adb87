"""BFCL multi-turn as tasks and tools: BFCL's multi-turn categories as task rows, BFCL's own
stateful API classes (GorillaFileSystem, TradingBot, VehicleControlAPI, ...) as the tools of an
episode, and synthetic training tasks over the same APIs where one call's result decides the
next call. Scoring with BFCL's multi-turn checker is in rl/bfcl_multi_turn.py.

Instances are made as BFCL's executor makes them (multi_turn_utils.execute_multi_turn_func_call):
`cls()`, then, unless the class is stateless, `_load_scenario(deepcopy(initial_config[cls]),
long_context=...)`. Tools are the bound methods, called with parsed keyword arguments; no call
string is ever evaluated here."""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
import keyword
import math
import random
from functools import lru_cache

from envs.bfcl import package_dir, read_json_lines, tool_schema
from tools.registry import Tool
from tools.sandbox import validate

MULTI_TURN = ["multi_turn_base", "multi_turn_long_context", "multi_turn_miss_param", "multi_turn_miss_func"]
CLASSES = ["GorillaFileSystem", "MathAPI", "MessageAPI", "TwitterAPI", "TicketAPI", "TradingBot", "TravelAPI",
           "VehicleControlAPI"]


@lru_cache(maxsize=1)
def backend() -> dict:
    """BFCL's tables: class -> module, class -> func-doc file, stateless classes, and the user
    message BFCL sends when a held-out function becomes available (miss_func)."""
    package_dir()  # BFCL_PROJECT_ROOT first, as the package requires
    from bfcl_eval.constants import default_prompts, executable_backend_config as config

    return {"modules": config.CLASS_FILE_PATH_MAPPING, "docs": config.MULTI_TURN_FUNC_DOC_FILE_MAPPING,
            "stateless": set(config.STATELESS_CLASSES),
            "added_prompt": default_prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC}


def is_long_context(category: str) -> bool:
    """BFCL loads long-context scenarios for these categories (its test_category test)."""
    return "long_context" in category or "composite" in category


@lru_cache(maxsize=None)
def func_docs(class_name: str) -> tuple[dict, ...]:
    """BFCL's function docs of one API class (data/multi_turn_func_doc)."""
    if class_name not in backend()["docs"]:
        raise ValueError(f"BFCL class {class_name!r} has no function docs: use one of {CLASSES}")
    return tuple(read_json_lines(package_dir() / "data" / "multi_turn_func_doc" / backend()["docs"][class_name]))


def class_specs(class_names: list[str]) -> list[dict]:
    """Plain tool specs of the classes' functions, JSON-schema typed like the single-turn ones."""
    return [tool_schema(doc, "python") for c in class_names for doc in func_docs(c)]


@lru_cache(maxsize=None)
def bfcl_class(class_name: str) -> type:
    if class_name not in backend()["modules"]:
        raise ValueError(f"unknown BFCL class {class_name!r}: use one of {CLASSES}")
    return getattr(importlib.import_module(backend()["modules"][class_name]), class_name)


def new_instance(class_name: str, initial_config: dict, long_context: bool = False):
    """A fresh instance loaded with its scenario, exactly as BFCL's executor makes one."""
    instance = bfcl_class(class_name)()
    if class_name not in backend()["stateless"]:
        instance._load_scenario(copy.deepcopy(initial_config.get(class_name, {})), long_context=long_context)
    return instance


# --- data -------------------------------------------------------------------------------


def load_multi_turn(category: str = "multi_turn_base", limit: int | None = None) -> list[dict]:
    """BFCL's entries of a multi-turn category as task rows:
    messages (first user turn), user_turns (the later turns), tools (plain specs of the involved
    classes' functions), involved_classes, initial_config, ground_truth_turns (BFCL's answer per
    turn: call strings), ground_truth (the same calls flattened, as keyword calls),
    excluded_function and path (BFCL metadata), added_tools.
    miss_func: BFCL holds some functions back until a later turn; those are left out of `tools`
    and listed in added_tools {"<turn index>": [specs]}, and that turn's (empty) user message is
    BFCL's "I have updated some more functions ..." prompt. An env must add them at that turn."""
    if category not in MULTI_TURN:
        raise ValueError(f"BFCL category {category!r} is not a supported multi-turn category: use one of {MULTI_TURN}")
    data = package_dir() / "data"
    entries = read_json_lines(data / f"BFCL_v4_{category}.json")[:limit]
    answers_file = data / "possible_answer" / f"BFCL_v4_{category}.json"
    answers = {a["id"]: a["ground_truth"] for a in read_json_lines(answers_file)}
    return [to_task(e, answers[e["id"]], category) for e in entries]


def to_task(entry: dict, ground_truth_turns: list[list[str]], category: str) -> dict:
    classes = entry["involved_classes"]
    missed = entry.get("missed_function", {})
    held_back = {name for names in missed.values() for name in names}
    specs = class_specs(classes)
    turns = [list(turn) for turn in entry["question"]]
    for turn in missed:
        turns[int(turn)] = [{"role": "user", "content": backend()["added_prompt"]}]
    return {
        "id": entry["id"], "category": category, "messages": turns[0], "user_turns": turns[1:],
        "tools": [s for s in specs if s["name"] not in held_back],
        "added_tools": {turn: [s for s in specs if s["name"] in names] for turn, names in missed.items()},
        "involved_classes": classes, "initial_config": entry["initial_config"],
        "ground_truth_turns": ground_truth_turns,
        "ground_truth": [keyword_call(s, classes) for turn in ground_truth_turns for s in turn],
        "excluded_function": entry.get("excluded_function", []), "path": entry.get("path", []),
    }


# --- call strings -----------------------------------------------------------------------


def parse_call(text: str) -> tuple[str, list, dict] | None:
    """`name(a, k=v)` -> (name, [a], {k: v}) when it is a single call of a bare ASCII name whose
    arguments are all Python literals; None for anything else (attribute access, nested calls,
    *args/**kwargs, names, expressions). Never evaluates anything but literals."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            return None
        name = node.func.id
        if not name.isascii() or ast.get_source_segment(text.strip(), node.func) != name:
            return None  # an identifier that only NFKC normalization turns into this name
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return None
        return name, [ast.literal_eval(a) for a in node.args], {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None


def _literal(value, depth: int = 0) -> bool:
    if depth > 50:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)  # repr(inf) is a name, not a literal
    if isinstance(value, (list, tuple)):
        return all(_literal(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_literal(k, depth + 1) and _literal(v, depth + 1) for k, v in value.items())
    return False


def render_call(call: dict) -> str | None:
    """{"name", "arguments"} -> `name(k=repr(v),...)` (BFCL's own rendering of a decoded call)
    when the name is an identifier and every value a Python literal; None otherwise. The result
    always parses back (parse_call) to the same call."""
    if not isinstance(call, dict):
        return None
    name, arguments = call.get("name"), call.get("arguments", {})
    if not (isinstance(name, str) and name.isidentifier() and name.isascii() and not keyword.iskeyword(name)):
        return None
    if not isinstance(arguments, dict) or not all(isinstance(k, str) and k.isidentifier() and k.isascii()
                                                  and not keyword.iskeyword(k) for k in arguments):
        return None
    if not _literal(list(arguments.values())):
        return None
    try:
        text = f"{name}({','.join(f'{k}={v!r}' for k, v in arguments.items())})"
    except (ValueError, RecursionError):  # an int too long to print
        return None
    return text if parse_call(text) == (name, [], arguments) else None


def keyword_call(text: str, class_names: list[str]) -> dict | None:
    """A call string -> {"name", "arguments"} with positional arguments bound to parameter
    names (BFCL's answers write a few calls positionally: `sort('final_report.pdf')`)."""
    parsed = parse_call(text)
    if parsed is None:
        return None
    name, args, kwargs = parsed
    method = next((getattr(bfcl_class(c), name) for c in class_names if hasattr(bfcl_class(c), name)), None)
    if args and method is not None:
        params = [p for p in inspect.signature(method).parameters if p != "self"]
        kwargs = {**dict(zip(params, args)), **kwargs}
    return {"name": name, "arguments": kwargs}


# --- state and tools --------------------------------------------------------------------


def jsonable(value):
    """BFCL state as JSON data that compares equal exactly when BFCL's state checker would
    (file-system nodes by name and content, never by parent; sets sorted; keys as strings)."""
    directory, file = _fs_types()
    if isinstance(value, directory):
        contents = {k: jsonable(v) for k, v in value.contents.items()}
        return {"type": "directory", "name": value.name, "contents": contents}
    if isinstance(value, file):
        return {"type": "file", "name": value.name, "content": value.content}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [jsonable(v) for v in sorted(value, key=repr)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@lru_cache(maxsize=1)
def _fs_types() -> tuple[type, type]:
    module = importlib.import_module(backend()["modules"]["GorillaFileSystem"])
    return module.Directory, module.File


def instance_state(instance) -> dict:
    """The public attributes BFCL's state checker compares, as JSON data."""
    return {k: jsonable(v) for k, v in vars(instance).items() if not k.startswith("_")}


class BFCLEpisode:
    """One episode's fresh instances of the task's classes; tools are their bound methods.
    Stateful classes run in-process (isolated=False), one call at a time per instance (serial);
    stateless MathAPI runs in the sandbox under its limits (power(10, 10**9) must not hang us)."""

    def __init__(self, task: dict):
        category = task.get("category", "") + " " + task.get("id", "").rsplit("_", 1)[0]
        long_context = is_long_context(category)
        self.instances = {c: new_instance(c, task.get("initial_config", {}), long_context)
                          for c in task["involved_classes"]}
        self.tools: dict[str, Tool] = {}
        for class_name, instance in self.instances.items():
            stateless = class_name in backend()["stateless"]
            for spec in class_specs([class_name]):
                self.tools[spec["name"]] = Tool(fn=getattr(instance, spec["name"]),
                                                schema={"type": "function", "function": spec},
                                                isolated=stateless, serial=None if stateless else id(instance))

    def state(self) -> dict:
        return {c: instance_state(i) for c, i in self.instances.items()}

    def close(self) -> None:
        return None


def train_eval_split(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Synthetic train rows and held-out rows (another seed), no held-out request also in train."""
    train = generate_tasks(n_train, seed)
    seen = {(t["messages"][0]["content"], json.dumps(t["initial_config"], sort_keys=True)) for t in train}
    held = [t for t in generate_tasks(n_eval * 2, seed + 7919)
            if (t["messages"][0]["content"], json.dumps(t["initial_config"], sort_keys=True)) not in seen]
    return train, held[:n_eval]


class BFCLTools:
    """ToolSource of BFCL's API classes: specs are the task's tools (BFCL's function docs),
    every episode gets fresh instances loaded with the task's initial_config. The episode's
    tools include functions a miss_func task holds back: BFCL executes them too."""

    task_dependent = True  # which classes an episode has depends on its task

    def specs(self, task: dict | None = None) -> list[dict]:
        if task is None:
            return class_specs(CLASSES)
        return list(task["tools"])

    def episode(self, task: dict) -> BFCLEpisode:
        return BFCLEpisode(task)


# --- synthetic training tasks -------------------------------------------------------------
# Each template builds a fresh scenario from its seed and the user turns with their gold calls.
# What the acting call needs (a path, a symbol and its price, an id, the unlocked doors) is in
# an earlier call's result, never in the user's text.

SYNTHETIC = "bfcl_synthetic"
PEOPLE = ["Avery", "Jordan", "Priya", "Mateo", "Lena", "Kofi", "Sora", "Ines", "Dmitri", "Maya", "Tariq", "Elif",
          "Noah", "Yuki", "Rosa", "Felix", "Amara", "Bruno", "Chen", "Dalia"]
TOPICS = ["budget", "roadmap", "invoice", "survey", "inventory", "payroll", "forecast", "audit", "release", "minutes",
          "backlog", "contract", "pitch", "timeline", "expenses", "lessons", "recipes", "travel", "garden", "workout"]
FOLDERS = ["projects", "archive", "drafts", "reports", "shared", "notes", "media", "backup", "clients", "research",
           "old_stuff", "inbox_files"]
EXTENSIONS = [".txt", ".csv", ".md", ".log", ".json"]
COMPANIES = ["Apple", "Google", "Tesla", "Microsoft", "Nvidia", "Zeta Corp", "Alpha Tech", "Omega Industries",
             "Quasar Ltd.", "Neptune Systems", "Synex Solutions"]
WORDS = ["hackathon", "sourdough", "eclipse", "robotics", "vinyl", "marathon", "origami", "telescope", "kayak",
         "chess", "pottery", "synthwave", "birdwatching", "espresso", "bouldering", "podcast"]


def call(name: str, /, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


def _d(contents: dict) -> dict:
    return {"type": "directory", "contents": contents}


def _f(text: str) -> dict:
    return {"type": "file", "content": text}


def _file_names(rng, k: int, ext: str | None = None) -> list[str]:
    topics = rng.sample(TOPICS, k)
    return [f"{t}_{rng.randint(1, 99)}{ext or rng.choice(EXTENSIONS)}" for t in topics]


def _text(rng, lines: int = 1) -> str:
    return "\n".join(f"{rng.choice(TOPICS)} item {rng.randint(1, 999)}: {rng.choice(WORDS)} {rng.choice(PEOPLE)}"
                     for _ in range(lines))


def _shuffled(rng, items: dict) -> dict:
    keys = list(items)
    rng.shuffle(keys)
    return {k: items[k] for k in keys}


def fs_find_copy(rng):
    home, (a, b, c) = rng.choice(PEOPLE).lower(), rng.sample(FOLDERS, 3)
    target, *others = _file_names(rng, 4)
    stem, ext = target.rsplit(".", 1)
    copy_name = f"{stem}_backup.{ext}"
    deep = rng.random() < 0.5
    inner = _shuffled(rng, {target: _f(_text(rng, 2)), others[0]: _f(_text(rng))})
    tree = {a: _d({b: _d(inner)} if deep else inner), c: _d({others[1]: _f(_text(rng))}), others[2]: _f(_text(rng))}
    gold = [call("find", path=".", name=target), call("cd", folder=a)] + ([call("cd", folder=b)] if deep else [])
    text = (f"There is a file named '{target}' somewhere below my current directory. Find it, go to its folder and "
            f"make a copy of it there called '{copy_name}'.")
    gold.append(call("cp", source=target, destination=copy_name))
    return {"GorillaFileSystem": {"root": {home: _d(_shuffled(rng, tree))}}}, [(text, gold)]


def fs_note_move(rng):
    home, folder = rng.choice(PEOPLE).lower(), rng.choice(FOLDERS)
    note = rng.choice(["todo.txt", "reminder.txt", "notes_to_self.md"])
    files = _file_names(rng, 3)
    target = rng.choice(files)
    tree = {note: _f(f"Before the {rng.choice(TOPICS)} review: move {target} into {folder}."), folder: _d({}),
            **{f: _f(_text(rng)) for f in files}}
    turns = [(f"My note '{note}' says which file belongs in which folder. Read it and do the move.",
              [call("cat", file_name=note), call("mv", source=target, destination=folder)])]
    if rng.random() < 0.5:
        turns.append((f"Now list what is inside '{folder}'.", [call("cd", folder=folder), call("ls")]))
    return {"GorillaFileSystem": {"root": {home: _d(_shuffled(rng, tree))}}}, turns


def fs_move_by_extension(rng):
    home, dest = rng.choice(PEOPLE).lower(), rng.choice(FOLDERS)
    ext = rng.choice(EXTENSIONS)
    matching = _file_names(rng, rng.randint(2, 3), ext)
    others = [n for n in _file_names(rng, 4) if not n.endswith(ext) and n not in matching][:2]
    exists = rng.random() < 0.5
    tree = _shuffled(rng, {**{f: _f(_text(rng)) for f in matching + others}, **({dest: _d({})} if exists else {})})
    gold = [call("ls")] + ([] if exists else [call("mkdir", dir_name=dest)])
    gold += [call("mv", source=f, destination=dest) for f in tree if f in matching]
    text = f"Move every {ext} file in my current directory into the folder '{dest}' (create it if it is not there yet)."
    return {"GorillaFileSystem": {"root": {home: _d(tree)}}}, [(text, gold)]


def fs_count_lines(rng):
    home, folder = rng.choice(PEOPLE).lower(), rng.choice(FOLDERS)
    lines = rng.randint(2, 7)
    report = f"report_{rng.choice(TOPICS)}{rng.choice(EXTENSIONS)}"
    out = rng.choice(["line_count.txt", "count.txt", "summary.txt"])
    inner = _shuffled(rng, {report: _f(_text(rng, lines)), **{f: _f(_text(rng, 3)) for f in _file_names(rng, 2)}})
    tree = {folder: _d(inner), **{f: _f(_text(rng)) for f in _file_names(rng, 1)}}
    text = (f"In the folder '{folder}' there is exactly one file whose name starts with 'report'. Count its lines and "
            f"write just that number into a new file '{out}' in the same folder.")
    gold = [call("cd", folder=folder), call("ls"), call("wc", file_name=report, mode="l"), call("touch", file_name=out),
            call("echo", content=str(lines), file_name=out)]
    return {"GorillaFileSystem": {"root": {home: _d(tree)}}}, [(text, gold)]


@lru_cache(maxsize=None)
def _symbol(company: str) -> str:
    return new_instance("TradingBot", {}).get_symbol_by_name(name=company)["symbol"]


def _trading(rng, symbols: list[str], **extra) -> dict:
    stocks = {}
    for s in symbols:
        price = round(rng.uniform(20, 900), 2)
        stocks[s] = {"price": price, "percent_change": rng.choice([-1, 1]) * round(rng.uniform(0.05, 3), 2),
                     "volume": round(rng.uniform(0.5, 4), 3), "MA(5)": round(price * rng.uniform(0.97, 1.03), 2),
                     "MA(20)": round(price * rng.uniform(0.95, 1.05), 2)}
    config = {"orders": {}, "account_info": {"account_id": rng.randint(10000, 99999), "balance": 10000.0,
                                             "binding_card": rng.randint(10**15, 10**16 - 1)},
              "authenticated": True, "market_status": "Open", "order_counter": rng.randint(1000, 9000),
              "stocks": stocks, "watch_list": [], "transaction_history": []}
    return {**config, **extra}


def trade_buy_company(rng):
    company, *others = rng.sample(COMPANIES, 4)
    symbol = _symbol(company)
    config = _trading(rng, [symbol] + [_symbol(c) for c in others])
    price, amount = config["stocks"][symbol]["price"], rng.randint(2, 20)
    config["account_info"]["balance"] = round(price * amount + rng.uniform(500, 5000), 2)
    turns = [(f"Buy {amount} shares of {company} at the current market price.",
              [call("get_symbol_by_name", name=company), call("get_stock_info", symbol=symbol),
               call("place_order", order_type="Buy", symbol=symbol, price=price, amount=amount)])]
    if rng.random() < 0.5:
        turns.append(("Also put that stock on my watchlist.", [call("add_to_watchlist", stock=symbol)]))
    return {"TradingBot": config}, turns


def trade_cancel_open(rng):
    symbols = [_symbol(c) for c in rng.sample(COMPANIES, 3)]
    config = _trading(rng, symbols)
    target_symbol, ids = symbols[0], sorted(rng.sample(range(10000, 99999), 4))
    target = rng.choice(ids)
    orders = {}
    for i in ids:
        symbol = target_symbol if i == target or rng.random() < 0.4 else rng.choice(symbols[1:])
        status = rng.choice(["Open", "Pending"]) if i == target else (
            "Completed" if symbol == target_symbol else rng.choice(["Open", "Completed"]))
        orders[str(i)] = {"id": i, "order_type": rng.choice(["Buy", "Sell"]), "symbol": symbol,
                          "price": config["stocks"][symbol]["price"], "amount": rng.randint(1, 30), "status": status}
    config.update(orders=orders, order_counter=ids[-1] + 1)
    gold = [call("get_order_history")] + [call("get_order_details", order_id=i) for i in ids[:ids.index(target) + 1]]
    return {"TradingBot": config}, [(f"Cancel my {target_symbol} order that has not been filled yet.",
                                     gold + [call("cancel_order", order_id=target)])]


def trade_prune_watchlist(rng):
    symbols = [_symbol(c) for c in rng.sample(COMPANIES, rng.randint(3, 5))]
    config = _trading(rng, symbols, watch_list=list(symbols))
    down = rng.sample(symbols, rng.randint(1, len(symbols) - 1))
    for s in symbols:
        config["stocks"][s]["percent_change"] = abs(config["stocks"][s]["percent_change"]) * (-1 if s in down else 1)
    gold = [call("get_watchlist")] + [call("get_stock_info", symbol=s) for s in symbols]
    gold += [call("remove_stock_from_watchlist", symbol=s) for s in symbols if s in down]
    return {"TradingBot": config}, [("Remove every stock on my watchlist that is down today (negative percent change).",
                                     gold)]


def trade_withdraw_quarter(rng):
    config = _trading(rng, [_symbol(c) for c in rng.sample(COMPANIES, 2)])
    balance = float(4 * rng.randint(500, 6000))
    config["account_info"]["balance"] = balance
    return {"TradingBot": config}, [("Withdraw a quarter of my account balance.",
                                     [call("get_account_info"), call("withdraw_funds", amount=balance / 4)])]


def car_fill_tank(rng):
    fuel = rng.randint(2, 90) / 2
    return {"VehicleControlAPI": {"fuelLevel": fuel}}, [
        ("Fill up my fuel tank completely. It holds 50 gallons.",
         [call("displayCarStatus", option="fuel"), call("fillFuelTank", fuelAmount=50.0 - fuel)])]


def car_start(rng):
    doors = ["driver", "passenger", "rear_left", "rear_right"]
    unlocked = [d for d in doors if d in rng.sample(doors, rng.randint(1, 4))]
    config = {"fuelLevel": float(rng.randint(10, 40)), "brakePedalStatus": "released",
              "doorStatus": {d: "unlocked" if d in unlocked else "locked" for d in doors}}
    gold = [call("displayCarStatus", option="doors"), call("lockDoors", unlock=False, door=unlocked),
            call("pressBrakePedal", pedalPosition=1.0), call("startEngine", ignitionMode="START")]
    return {"VehicleControlAPI": config}, [("Start the engine for me. Some doors may still be unlocked: lock those "
                                            "first.", gold)]


def car_tires(rng):
    healthy = rng.random() < 0.3
    low, high = (31, 34) if healthy else (22, 28)
    tires = ["frontLeft", "frontRight", "rearLeft", "rearRight"]
    config = {f"{t}TirePressure": float(rng.randint(low, high)) for t in tires}
    gold = [call("check_tire_pressure")]
    if not healthy:
        shop = new_instance("VehicleControlAPI", {}).find_nearest_tire_shop()["shopLocation"]
        gold += [call("find_nearest_tire_shop"), call("set_navigation", destination=shop)]
    return {"VehicleControlAPI": config}, [("Check my tire pressure. If it is not healthy, set the navigation to the "
                                            "nearest tire shop.", gold)]


def _messages(rng) -> tuple[dict, list[str]]:
    names = rng.sample(PEOPLE, rng.randint(4, 6))
    ids = [f"USR{n:03d}" for n in rng.sample(range(1, 999), len(names))]
    user_map = dict(zip(names, ids))
    inbox = [{rng.choice(ids[1:]): _text(rng)} for _ in range(rng.randint(1, 4))]
    return {"user_count": len(names), "user_map": user_map, "inbox": inbox, "message_count": len(inbox),
            "current_user": ids[0]}, names


def msg_send(rng):
    config, names = _messages(rng)
    name = rng.choice(names[1:])
    text = f"The {rng.choice(TOPICS)} meeting moved to {rng.randint(1, 12)} pm."
    turns = [(f"Send {name} this message: '{text}'",
              [call("get_user_id", user=name),
               call("send_message", receiver_id=config["user_map"][name], message=text)])]
    if rng.random() < 0.5:
        turns.append(("Then show me all the messages I have sent.", [call("view_messages_sent")]))
    return {"MessageAPI": config}, turns


def msg_delete_last(rng):
    config, names = _messages(rng)
    name = rng.choice(names[1:])
    receiver = config["user_map"][name]
    config["inbox"].insert(rng.randint(0, len(config["inbox"])), {receiver: _text(rng)})
    config["message_count"] = len(config["inbox"])
    return {"MessageAPI": config}, [(f"Delete the latest message I sent to {name}.",
                                     [call("get_user_id", user=name), call("delete_message", receiver_id=receiver)])]


def _tickets(rng) -> tuple[dict, dict]:
    user = rng.choice(PEOPLE).lower()
    ids = rng.sample(range(100, 999), rng.randint(3, 5))
    tickets = [{"id": i, "title": f"{t.capitalize()} {rng.choice(['issue', 'request', 'question'])}",
                "description": _text(rng), "status": rng.choice(["Open", "In Progress"]), "priority": rng.randint(1, 4),
                "created_by": user} for i, t in zip(ids, rng.sample(TOPICS, len(ids)))]
    config = {"ticket_queue": tickets, "ticket_counter": max(ids) + 1, "current_user": user}
    return config, rng.choice(tickets)


def ticket_close(rng):
    config, target = _tickets(rng)
    return {"TicketAPI": config}, [(f"Close my support ticket titled '{target['title']}'.",
                                    [call("get_user_tickets"), call("close_ticket", ticket_id=target["id"])])]


def ticket_priority(rng):
    config, target = _tickets(rng)
    return {"TicketAPI": config}, [(f"Set my ticket '{target['title']}' to the highest priority.",
                                    [call("get_user_tickets"),
                                     call("edit_ticket", ticket_id=target["id"], updates={"priority": 5})])]


def _twitter(rng, posts: list[tuple[str, str]]) -> dict:
    me = rng.choice(PEOPLE).lower() + str(rng.randint(1, 99))
    ids = sorted(rng.sample(range(1, 500), len(posts)))
    tweets = {str(i): {"id": i, "username": who, "content": text, "tags": [f"#{rng.choice(TOPICS)}"], "mentions": []}
              for i, (who, text) in zip(ids, posts)}
    return {"username": me, "password": f"{me}_pw{rng.randint(100, 999)}", "authenticated": True, "tweets": tweets,
            "comments": {}, "retweets": {}, "following_list": [], "tweet_counter": ids[-1] + 1}


def tweet_retweet_latest(rng):
    authors = [p.lower() for p in rng.sample(PEOPLE, 3)]
    posts = [(rng.choice(authors), f"Thoughts on {rng.choice(WORDS)} and {rng.choice(TOPICS)}") for _ in range(5)]
    author = posts[0][0]
    config = _twitter(rng, posts)
    latest = max(t["id"] for t in config["tweets"].values() if t["username"] == author)
    return {"TwitterAPI": config}, [(f"Retweet the most recent tweet by {author} (the one with the highest id).",
                                     [call("get_user_tweets", username=author), call("retweet", tweet_id=latest)])]


def tweet_comment_keyword(rng):
    word, *others = rng.sample(WORDS, 5)
    authors = [p.lower() for p in rng.sample(PEOPLE, 3)]
    posts = [(rng.choice(authors), f"Weekend plans: {w} with friends") for w in [word] + others[:3]]
    rng.shuffle(posts)
    config = _twitter(rng, posts)
    tweet = next(t["id"] for t in config["tweets"].values() if word in t["content"])
    reply = f"Count me in, {rng.choice(['sounds great', 'love it', 'see you there'])}!"
    return {"TwitterAPI": config}, [(f"Find the tweet that mentions '{word}' and comment '{reply}' on it.",
                                     [call("search_tweets", keyword=word),
                                      call("comment", tweet_id=tweet, comment_content=reply)])]


TEMPLATES = {f.__name__: f for f in [
    fs_find_copy, fs_note_move, fs_move_by_extension, fs_count_lines, trade_buy_company, trade_cancel_open,
    trade_prune_watchlist, trade_withdraw_quarter, car_fill_tank, car_start, car_tires, msg_send, msg_delete_last,
    ticket_close, ticket_priority, tweet_retweet_latest, tweet_comment_keyword]}


def generate_tasks(n: int, seed: int = 0) -> list[dict]:
    """n synthetic tasks in load_multi_turn's row format plus template and expected_state (the
    state after the gold calls on fresh instances); templates taken in turn, in a seeded order.
    Deterministic per seed; a template whose gold calls fail raises (a bug, not data)."""
    order = sorted(TEMPLATES)
    random.Random(seed).shuffle(order)
    return [synthetic_task(order[i % len(order)], seed, i) for i in range(n)]


def synthetic_task(template: str, seed: int, index: int) -> dict:
    rng = random.Random(seed * 1_000_003 + index)
    config, turns = TEMPLATES[template](rng)
    config = json.loads(json.dumps(config))  # the row is JSON data, as a dataset stores it
    classes = list(config)
    user = [[{"role": "user", "content": text}] for text, _ in turns]
    task = {"id": f"{SYNTHETIC}_{template}_{seed}_{index}", "category": SYNTHETIC, "template": template,
            "messages": user[0], "user_turns": user[1:], "tools": class_specs(classes), "added_tools": {},
            "involved_classes": classes, "initial_config": config,
            "ground_truth_turns": [[render_call(c) for c in calls] for _, calls in turns],
            "ground_truth": [c for _, calls in turns for c in calls], "excluded_function": [], "path": [],
            "turn_calls": [calls for _, calls in turns]}  # the gold calls per user turn (SFT's gold episode)
    episode = BFCLEpisode(task)
    for c in task["ground_truth"]:
        tool = episode.tools[c["name"]]
        problem = validate(tool, c["arguments"])
        result = None if problem else tool.fn(**c["arguments"])
        if problem or is_error(result):
            raise RuntimeError(f"synthetic template {template} (seed {seed}, task {index}) is broken: {c} -> "
                               f"{problem or result}")
    task["expected_state"] = episode.state()
    return task


def is_error(result) -> bool:
    """A BFCL API result that reports a failure ({"error": ...}, or a list holding one)."""
    if isinstance(result, dict):
        return "error" in result
    if isinstance(result, list):
        return any(isinstance(r, dict) and "error" in r for r in result)
    return isinstance(result, str) and result.startswith("Error")
