"""Seeded generator of single-turn tool-calling tasks; needs no hub access.

Every row is a task: {"id", "category", "messages", "tools", "ground_truth"} where
`tools` are JSON schemas ({"name", "description", "parameters"}) and `ground_truth` is
the list of calls [{"name", "arguments"}] that answers the user; [] when no tool applies.

Categories (as BFCL names them):
    simple             one tool offered, one call
    multiple           several tools offered, one call
    parallel           one tool called several times in one answer
    parallel_multiple  several tools offered, calls of two or three of them in one answer
    irrelevance        no offered tool fits the request: the answer is []
    multi_turn         (built-in tools, env=tool_env) two calls where the second needs the
                       first one's result: the model must call, read the tool message, call again
                       (envs/synthetic_multi_turn.py; rows also carry answer and expected_state)

Arguments cover the types BFCL checks: strings, enums, int, float, bool, arrays, nested
objects, and optional parameters (asked for in some requests, left out in others: the gold
call has them only when the request says them). The typed tools come with `typed_tools`. With `bfcl_disjoint` the tools are renamed
so that no function name (nor description) is also one of BFCL's.
"""

from __future__ import annotations

import itertools
import random
import string
from dataclasses import dataclass
from typing import Any, Callable

CATEGORIES = ("simple", "multiple", "parallel", "irrelevance", "parallel_multiple")

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Seoul", "Madrid", "Nairobi", "Toronto", "Hanoi", "Berlin"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF", "CAD", "INR", "BRL"]
LANGUAGES = ["French", "German", "Spanish", "Japanese", "Italian", "Korean"]
PHRASES = ["good morning", "thank you", "where is the station", "see you soon", "happy birthday", "how much is it"]
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG", "META", "IBM"]
CUISINES = ["thai", "italian", "mexican", "indian", "japanese", "greek"]
NAMES = ["Alice", "Bob", "Chen", "Dana", "Elif", "Farah", "Goran", "Hiro"]


@dataclass(frozen=True)
class ToolSpec:
    """A tool's JSON schema plus ways to ask for a call of it in plain words."""

    schema: dict
    sample_args: Callable[[random.Random], dict]
    templates: tuple[str, ...]  # str.format(**words(args)); only templates naming every argument are used
    words: Callable[[dict], dict] = lambda args: args  # arguments as words: lists joined, nested fields flattened

    @property
    def name(self) -> str:
        return self.schema["name"]

    def renamed(self, name: str) -> "ToolSpec":
        return ToolSpec({**self.schema, "name": name}, self.sample_args, self.templates, self.words)


def _fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }


def _s(desc: str | None = None, **extra: Any) -> dict:
    """A string parameter; the description is left out where the name says it all (short prompts)."""
    return {"type": "string", **({"description": desc} if desc else {}), **extra}


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        _fn("get_weather", "Current weather in a city.",
            {"city": _s(), "unit": _s(enum=["celsius", "fahrenheit"])}, ["city", "unit"]),
        lambda r: {"city": r.choice(CITIES), "unit": r.choice(["celsius", "fahrenheit"])},
        ("What is the weather in {city} in {unit}?", "Tell me the current weather in {city}, using {unit}.",
         "How warm is it in {city} right now? Answer in {unit}."),
    ),
    ToolSpec(
        _fn("convert_currency", "Convert an amount of money between currencies.",
            {"amount": {"type": "integer"},
             "from_currency": _s("ISO code to convert from"), "to_currency": _s("ISO code to convert to")},
            ["amount", "from_currency", "to_currency"]),
        lambda r: {"amount": r.choice([5, 20, 50, 100, 250, 1000]), **dict(zip(("from_currency", "to_currency"), r.sample(CURRENCIES, 2)))},
        ("Convert {amount} {from_currency} to {to_currency}.", "How much is {amount} {from_currency} in {to_currency}?"),
    ),
    ToolSpec(
        _fn("get_stock_price", "Latest price of a stock.", {"symbol": _s("Ticker symbol")}, ["symbol"]),
        lambda r: {"symbol": r.choice(SYMBOLS)},
        ("What is the stock price of {symbol}?", "Get me the latest {symbol} share price."),
    ),
    ToolSpec(
        _fn("translate", "Translate text into another language.",
            {"text": _s(), "language": _s()}, ["text", "language"]),
        lambda r: {"text": r.choice(PHRASES), "language": r.choice(LANGUAGES)},
        ("Translate '{text}' into {language}.", "How do you say '{text}' in {language}?"),
    ),
    ToolSpec(
        _fn("find_restaurants", "Find restaurants in a city.",
            {"city": _s(), "cuisine": _s()}, ["city", "cuisine"]),
        lambda r: {"city": r.choice(CITIES), "cuisine": r.choice(CUISINES)},
        ("Find {cuisine} restaurants in {city}.", "Where can I eat {cuisine} food in {city}?"),
    ),
    ToolSpec(
        _fn("set_timer", "Start a countdown timer.", {"minutes": {"type": "integer"}}, ["minutes"]),
        lambda r: {"minutes": r.choice([1, 3, 5, 10, 15, 25, 30, 45])},
        ("Set a timer for {minutes} minutes.", "Start a {minutes} minute timer."),
    ),
    ToolSpec(
        _fn("send_email", "Send a short email.",
            {"to": _s(), "subject": _s()}, ["to", "subject"]),
        lambda r: {"to": r.choice(NAMES), "subject": r.choice(["lunch", "the report", "tomorrow", "the budget", "holidays"])},
        ("Email {to} about {subject}.", "Send {to} an email with the subject '{subject}'."),
    ),
)

# typed arguments: float, bool, arrays, nested objects, optional parameters (data.typed_tools)
TYPED_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        _fn("book_flight", "Book a flight between two cities.",
            {"origin": _s(), "destination": _s(), "passengers": {"type": "integer"},
             "cabin": _s(enum=["economy", "business"]), "refundable": {"type": "boolean", "description": "optional"}},
            ["origin", "destination", "passengers", "cabin"]),
        lambda r: {**dict(zip(("origin", "destination"), r.sample(CITIES, 2))), "passengers": r.randint(1, 4),
                   "cabin": r.choice(["economy", "business"]), **({"refundable": r.random() < 0.5} if r.random() < 0.4 else {})},
        ("Book {passengers} {cabin} seats from {origin} to {destination}.",
         "I need a {cabin} flight {origin} to {destination} for {passengers} people.",
         "Book {passengers} {cabin} seats from {origin} to {destination}, {refundable_words}.",
         "Fly {passengers} of us {cabin} from {origin} to {destination}; {refundable_words}."),
        lambda a: {**a, **({"refundable_words": "refundable please" if a["refundable"] else "non-refundable is fine"}
                           if "refundable" in a else {})},
    ),
    ToolSpec(
        _fn("schedule_meeting", "Put a meeting in the calendar.",
            {"title": _s(), "attendees": {"type": "array", "items": {"type": "string"}},
             "hours": {"type": "number", "description": "duration"},
             "reminder": {"type": "object", "properties": {"minutes": {"type": "integer"}, "channel": _s(enum=["email", "sms"])},
                          "required": ["minutes", "channel"]}},
            ["title", "attendees", "hours", "reminder"]),
        lambda r: {"title": r.choice(["budget review", "standup", "design sync", "retro"]), "attendees": r.sample(NAMES, r.randint(1, 3)),
                   "hours": r.choice([0.5, 1.0, 1.5, 2.0]), "reminder": {"minutes": r.choice([5, 10, 30]), "channel": r.choice(["email", "sms"])}},
        ("Schedule a {hours} hour {title} with {people}, remind me by {channel} {minutes} minutes before.",
         "Set up '{title}' for {hours} hours with {people}; {channel} reminder {minutes} minutes ahead."),
        lambda a: {**a, "people": " and ".join(a["attendees"]), **a["reminder"]},
    ),
    ToolSpec(
        _fn("set_thermostat", "Set the home thermostat.",
            {"celsius": {"type": "number"}, "eco": {"type": "boolean"}}, ["celsius", "eco"]),
        lambda r: {"celsius": r.choice([18.5, 19.0, 20.5, 21.0, 22.5]), "eco": r.random() < 0.5},
        ("Set the thermostat to {celsius} degrees with eco mode {eco_words}.", "Heat to {celsius} C, eco {eco_words}."),
        lambda a: {**a, "eco_words": "on" if a["eco"] else "off"},
    ),
)

# Names that are none of BFCL's functions (data.bfcl_disjoint=true); descriptions already differ.
BFCL_DISJOINT_NAMES = {"get_weather": "weather_now", "convert_currency": "exchange_money", "get_stock_price": "quote_ticker",
                       "translate": "render_in_language", "find_restaurants": "dining_search", "send_email": "mail_someone",
                       "book_flight": "reserve_air_seats"}


def _builtin_specs() -> tuple[ToolSpec, ...]:
    """Tasks over the project's real, executable tools (tools/builtin), schemas taken from the
    tools themselves, so every gold call also runs in the sandbox."""
    from tools.registry import get_tool

    dates = ["2026-01-15", "2026-02-27", "2026-03-01", "2026-06-30", "2026-12-24", "2027-02-28"]
    units = [("km", "mi"), ("mi", "km"), ("kg", "lb"), ("lb", "kg"), ("c", "f"), ("f", "c"), ("l", "gal"), ("h", "min")]
    return (
        ToolSpec(get_tool("calculate").spec,
                 lambda r: {"expression": f"{r.randint(2, 99)} {r.choice('+-*')} ({r.randint(2, 30)} {r.choice('+-*')} {r.randint(2, 30)})"},
                 ("Calculate {expression}.", "What is {expression}?")),
        ToolSpec(get_tool("convert_units").spec,
                 lambda r: dict(zip(("value", "from_unit", "to_unit"), (r.choice([1, 3, 10, 25, 100]), *r.choice(units)))),
                 ("Convert {value} {from_unit} to {to_unit}.", "How much is {value} {from_unit} in {to_unit}?")),
        ToolSpec(get_tool("add_days").spec, lambda r: {"start": r.choice(dates), "days": r.choice([1, 7, 10, 30, 90])},
                 ("What date is {days} days after {start}?", "Add {days} days to {start}.")),
        ToolSpec(get_tool("days_between").spec, lambda r: dict(zip(("start", "end"), sorted(r.sample(dates, 2)))),
                 ("How many days are there from {start} to {end}?", "Count the days between {start} and {end}.")),
    )


# Requests no tool above can serve: the right answer is [].
IRRELEVANT = (
    "Tell me a joke about cats.", "Who wrote Hamlet?", "What is the capital of Peru?",
    "Write a haiku about autumn.", "How many legs does a spider have?", "Explain what a prime number is.",
    "What is 7 times 8?", "Recommend a good book to read.", "Why is the sky blue?", "Say hello in a friendly way.",
    "Summarize the plot of Romeo and Juliet.", "What does DNA stand for?", "Give me a synonym for happy.",
    "How do I boil an egg?", "Who painted the Mona Lisa?", "Spell the word necessary backwards.",
)

_PARALLEL_JOIN = (" Also, ", " And ", " Then ")


def _ask(spec: ToolSpec, args: dict, rng: random.Random) -> str:
    words = spec.words(args)
    fitting = [t for t in spec.templates if _fits(t, words)]
    return rng.choice(fitting).format(**words)


def _fits(template: str, words: dict) -> bool:
    """Fillable from the words, and saying every optional argument given (its `<arg>_words`)."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    return fields <= set(words) and {k for k in words if k.endswith("_words")} <= fields


def _call(spec: ToolSpec, args: dict) -> dict:
    return {"name": spec.name, "arguments": args}


def make_task(category: str, rng: random.Random, specs: tuple[ToolSpec, ...] = TOOLS, family: str | None = None,
              near_miss: float = 0.0) -> dict:
    """One task of the given category, drawn from rng, over the tools in specs. near_miss is the
    share of irrelevance tasks that ask for a call of a catalog tool the task does not offer
    (as BFCL's irrelevance does); the others are requests no tool serves (IRRELEVANT)."""
    if category == "simple":
        spec = rng.choice(specs)
        args = spec.sample_args(rng)
        offered, query, calls = [spec], _ask(spec, args, rng), [_call(spec, args)]
    elif category == "multiple":
        offered = rng.sample(specs, rng.randint(2, 3))
        spec = rng.choice(offered)
        args = spec.sample_args(rng)
        query, calls = _ask(spec, args, rng), [_call(spec, args)]
    elif category == "parallel":
        spec = rng.choice(specs)
        arg_sets: list[dict] = []
        while len(arg_sets) < rng.randint(2, 3):
            args = spec.sample_args(rng)
            if args not in arg_sets:
                arg_sets.append(args)
        offered = [spec]
        asks = [_ask(spec, a, rng) for a in arg_sets]
        query = asks[0] + "".join(rng.choice(_PARALLEL_JOIN) + a[0].lower() + a[1:] for a in asks[1:])
        calls = [_call(spec, a) for a in arg_sets]
    elif category == "parallel_multiple":
        offered = rng.sample(specs, min(len(specs), rng.randint(2, 4)))
        chosen = rng.sample(offered, min(len(offered), rng.randint(2, 3)))
        arg_sets = [(spec, spec.sample_args(rng)) for spec in chosen]
        asks = [_ask(spec, a, rng) for spec, a in arg_sets]
        query = asks[0] + "".join(rng.choice(_PARALLEL_JOIN) + a[0].lower() + a[1:] for a in asks[1:])
        calls = [_call(spec, a) for spec, a in arg_sets]
    elif category == "irrelevance" and near_miss > 0 and rng.random() < near_miss:
        asked = rng.choice(specs)
        others = [s for s in specs if s.name != asked.name]
        offered = rng.sample(others, min(len(others), rng.randint(1, 2)))
        query, calls = _ask(asked, asked.sample_args(rng), rng), []
    elif category == "irrelevance":
        offered = rng.sample(specs, rng.randint(1, 2))
        query, calls = rng.choice(IRRELEVANT), []
    elif category == "multi_turn":
        from envs.synthetic_multi_turn import multi_turn_task

        return {"category": category, **multi_turn_task(rng, family)}
    else:
        raise ValueError(f"unknown synthetic category {category!r}; choose from {CATEGORIES} or multi_turn")
    return {
        "category": category,
        "messages": [{"role": "user", "content": query}],
        "tools": [s.schema for s in offered],
        "ground_truth": calls,
    }


def catalog(builtin_tools: bool = False, bfcl_disjoint: bool = False, typed_tools: bool = False) -> tuple[ToolSpec, ...]:
    specs = TOOLS + (TYPED_TOOLS if typed_tools else ()) + (_builtin_specs() if builtin_tools else ())
    if bfcl_disjoint:
        specs = tuple(s.renamed(BFCL_DISJOINT_NAMES[s.name]) if s.name in BFCL_DISJOINT_NAMES else s for s in specs)
    return specs


def generate(n: int, seed: int, categories: tuple[str, ...] | list[str] = CATEGORIES, weights: list[float] | None = None,
             builtin_tools: bool = False, bfcl_disjoint: bool = False, typed_tools: bool = False,
             near_miss: float = 0.0) -> list[dict]:
    """n tasks, categories drawn with the given weights; same seed, same rows. builtin_tools
    adds tasks over the executable built-in tools (calculator, units, dates); near_miss as in make_task."""
    rng = random.Random(seed)
    tools = catalog(builtin_tools, bfcl_disjoint, typed_tools)
    rows = []
    for i in range(n):
        category = rng.choices(list(categories), weights=weights)[0]
        rows.append({"id": f"synthetic-{seed}-{i}", **make_task(category, rng, tools, near_miss=near_miss)})
    return rows


def _families(category: str) -> tuple[str, ...]:
    if category != "multi_turn":
        return ()
    from envs.synthetic_multi_turn import FAMILIES

    return FAMILIES


def task_key(row: dict) -> tuple:
    """Two tasks are the same task if the request and the offered tools are the same."""
    return row["messages"][-1]["content"], tuple(sorted(t["name"] for t in row["tools"]))


def train_eval_split(n_train: int, n_eval: int, seed: int, categories=CATEGORIES, weights=None,
                     builtin_tools: bool = False, bfcl_disjoint: bool = False,
                     typed_tools: bool = False, near_miss: float = 0.0) -> tuple[list[dict], list[dict]]:
    """Train rows as generate() draws them; eval rows stratified (the same count from every
    category) and disjoint from train: no eval task occurs in train."""
    categories = list(categories)
    train = generate(n_train, seed, categories, weights, builtin_tools, bfcl_disjoint, typed_tools, near_miss)
    tools = catalog(builtin_tools, bfcl_disjoint, typed_tools)
    seen = {task_key(r) for r in train}
    rng = random.Random(seed + 1_000_003)
    eval_rows: list[dict] = []
    for k, category in enumerate(categories):
        quota = n_eval // len(categories) + (k < n_eval % len(categories))
        families = _families(category)
        for _attempt in range(200 * quota + 200):
            if quota == 0:
                break
            family = families[quota % len(families)] if families else None  # multi_turn: every family in turn
            row = make_task(category, rng, tools, family, near_miss)
            if task_key(row) not in seen:
                seen.add(task_key(row))
                eval_rows.append({"id": f"synthetic-eval-{seed}-{len(eval_rows)}", **row})
                quota -= 1
        if quota:
            raise ValueError(f"cannot draw enough {category} eval tasks disjoint from {n_train} train tasks: lower data.n_eval")
    by_category = [[r for r in eval_rows if r["category"] == c] for c in categories]
    interleaved = [r for round_ in itertools.zip_longest(*by_category) for r in round_ if r is not None]
    return train, interleaved  # round-robin over categories: any prefix (trainer.eval_size) stays balanced
