"""One command, `toolcall-rl`, with the `python -m` entry points as subcommands:

    toolcall-rl train [hydra overrides]        = python -m rl.train
    toolcall-rl eval  [hydra overrides]        = python -m rl.eval
    toolcall-rl score --category ... --predictions ...   = python -m rl.eval score
    toolcall-rl export CHECKPOINT OUT          = python -m rl.export
    toolcall-rl bench NAME [args]              = python bench/NAME.py (a source checkout)

A console script does not put the working directory on sys.path. It goes at the END here, so
the user's own modules stay importable for `_target_` while never shadowing our packages."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

COMMANDS = ("train", "eval", "score", "export", "bench")
BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def _cwd_last() -> None:
    """Our packages are bound first (an editable install's finder comes after every sys.path
    entry, so a `rewards.py` on the path would still win), then the working directory goes last."""
    import envs  # noqa: F401
    import rewards  # noqa: F401
    import tools  # noqa: F401

    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", cwd)] + [cwd]


def _usage() -> str:
    return "usage:\n" + __doc__.split("\n\n")[1] + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(_usage(), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    _cwd_last()
    if command == "train":
        return _hydra("rl.train", rest)
    if command == "eval":
        return _hydra("rl.eval", rest)
    if command == "score":
        from rl.eval import score_main

        return score_main(rest)
    if command == "export":
        from rl.export import main as export_main

        return export_main(rest)
    return _bench(rest)


def _hydra(module: str, overrides: list[str]) -> int:
    """Hydra reads sys.argv: give it the overrides as if run with python -m."""
    import importlib

    sys.argv = [f"toolcall-rl {module.split('.')[-1]}", *overrides]
    importlib.import_module(module).main()
    return 0


def _bench(rest: list[str]) -> int:
    names = sorted(p.stem for p in BENCH_DIR.glob("*.py")) if BENCH_DIR.is_dir() else []
    if not rest or rest[0] not in names:
        where = f"one of: {', '.join(names)}" if names else f"benchmarks come with a source checkout ({BENCH_DIR} is missing)"
        print(f"toolcall-rl bench NAME [args]: NAME is {where}", file=sys.stderr)
        return 2
    sys.argv = [str(BENCH_DIR / f"{rest[0]}.py"), *rest[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


def train() -> int:  # the toolcall-rl-train script
    return main(["train", *sys.argv[1:]])


def evaluate() -> int:  # the toolcall-rl-eval script (`toolcall-rl-eval score ...` too)
    args = sys.argv[1:]
    return main(args if args[:1] == ["score"] else ["eval", *args])


if __name__ == "__main__":
    sys.exit(main())
