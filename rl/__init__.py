"""The trainer. Importing it first checks that no local module shadows our other top-level
packages: a user's own `rewards.py` in the working directory would otherwise break every
import of `rewards` with "'rewards' is not a package"."""

import importlib.util
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
OUR_PACKAGES = ("rewards", "envs", "tools")


def shadowed() -> list[tuple[str, str]]:
    """(package, the file that shadows it) for each of our packages that resolves elsewhere."""
    found = []
    for name in OUR_PACKAGES:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is not None and _ROOT not in origin.parents:
            found.append((name, str(origin)))
    return found


for _name, _origin in shadowed():
    raise ImportError(
        f"{_origin} shadows toolcall-rl's `{_name}` package (it comes first on sys.path, usually because it is in "
        f"the working directory): rename it, e.g. to my_{_name}.py, and name its functions as "
        f"`_target_: my_{_name}.<function>` in the config")
