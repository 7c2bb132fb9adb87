"""What a reward function returns here: a plain list of floats (TRL's signature), which
may also carry, per completion, the reason a value is low."""

from __future__ import annotations


class Scores(list):
    """list[float] with `.reasons`: list[str | None], None where nothing went wrong.

    TRL sees an ordinary list; our trainer also reads the reasons and counts them."""

    def __init__(self, values, reasons):
        super().__init__(float(v) for v in values)
        self.reasons = list(reasons)
        if len(self.reasons) != len(self):
            raise ValueError(f"{len(self)} values but {len(self.reasons)} reasons")
