"""What a reward function returns here: a plain list of floats (TRL's signature), which
may also carry, per completion, the reason a value is low."""

from __future__ import annotations

import functools
from collections import Counter


class Scores(list):
    """list[float] with `.reasons`: list[str | None], None where nothing went wrong.

    TRL sees an ordinary list; our trainer also reads the reasons and counts them."""

    def __init__(self, values, reasons):
        super().__init__(float(v) for v in values)
        self.reasons = list(reasons)
        if len(self.reasons) != len(self):
            raise ValueError(f"{len(self)} values but {len(self.reasons)} reasons")


def reports_reasons(fn):
    """Decorates a reward that returns Scores, so that under TRL's GRPOTrainer its reasons
    reach TRL's logs. TRL passes `log_metric(name, value)` and `log_extra(column, values)` to
    every reward function; with them, each call logs

        reason/<fn name>/<reason>   metric: share of the batch's completions with that reason
        reason/<fn name>            column of the completions table: each completion's reason

    the keys our own trainer logs (with the function's name, the name TRL gives the reward).
    A reason once seen is logged as 0 in batches without it, so that TRL's mean over a logging
    window is a share of all its batches. Without TRL's callables (our trainer, a direct call)
    nothing is logged; the wrapped function never sees them."""
    name = getattr(fn, "__name__", type(fn).__name__)
    seen: set[str] = set()

    @functools.wraps(fn)
    def reward(*args, log_metric=None, log_extra=None, **kwargs):
        out = fn(*args, **kwargs)
        reasons = getattr(out, "reasons", None)
        if reasons is not None:
            log_reasons(name, reasons, log_metric, log_extra, seen)
        return out

    return reward


def log_reasons(name: str, reasons: list, log_metric=None, log_extra=None, seen: set | None = None) -> None:
    """Report one batch's reasons through TRL's callables (see reports_reasons)."""
    if log_extra is not None:
        log_extra(f"reason/{name}", list(reasons))
    if log_metric is not None and reasons:
        counts = Counter(r for r in reasons if r is not None)
        seen = set() if seen is None else seen
        seen.update(counts)
        for reason in sorted(seen):
            log_metric(f"reason/{name}/{reason}", counts.get(reason, 0) / len(reasons))
