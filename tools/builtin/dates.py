"""Date arithmetic on ISO dates (YYYY-MM-DD)."""

from __future__ import annotations

from datetime import date, timedelta

from tools.registry import tool


@tool
def add_days(start: str, days: int) -> str:
    """Add a number of days to a date.

    Args:
        start: A date as YYYY-MM-DD.
        days: Days to add; negative goes back.
    """
    return (date.fromisoformat(start) + timedelta(days=days)).isoformat()


@tool
def days_between(start: str, end: str) -> int:
    """Count the days from one date to another.

    Args:
        start: The first date, YYYY-MM-DD.
        end: The second date, YYYY-MM-DD.
    """
    return (date.fromisoformat(end) - date.fromisoformat(start)).days
