"""Built-in tools: a calculator, unit conversion, date arithmetic and a key-value store."""

from tools.builtin.calculator import calculate
from tools.builtin.dates import add_days, days_between
from tools.builtin.kv import KeyValueStore
from tools.builtin.units import convert_units

__all__ = ["calculate", "convert_units", "add_days", "days_between", "KeyValueStore"]
