"""Unit conversion for length, mass, volume, time and temperature."""

from __future__ import annotations

from tools.registry import tool

# factor to the base unit of each dimension
_FACTORS = {
    "length": {"m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "mi": 1609.344, "ft": 0.3048, "in": 0.0254, "yd": 0.9144},
    "mass": {"kg": 1.0, "g": 0.001, "mg": 1e-6, "lb": 0.45359237, "oz": 0.028349523125, "t": 1000.0},
    "volume": {"l": 1.0, "ml": 0.001, "gal": 3.785411784, "cup": 0.2365882365, "m3": 1000.0},
    "time": {"s": 1.0, "min": 60.0, "h": 3600.0, "day": 86400.0, "week": 604800.0},
}
_TEMPERATURE = {"c", "f", "k"}


def _to_kelvin(value: float, unit: str) -> float:
    return {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"c": value - 273.15, "f": (value - 273.15) * 9 / 5 + 32, "k": value}[unit]


@tool
def convert_units(value: float, from_unit: str, to_unit: str) -> float:
    """Convert a quantity between units of the same kind.

    Args:
        value: The amount to convert.
        from_unit: Unit of value: m, km, cm, mm, mi, ft, in, yd, kg, g, mg, lb, oz, t, l, ml, gal, cup, m3, s, min, h, day, week, c, f, k.
        to_unit: Unit to convert to, of the same kind.
    """
    a, b = from_unit.strip().lower(), to_unit.strip().lower()
    if a in _TEMPERATURE and b in _TEMPERATURE:
        return round(_from_kelvin(_to_kelvin(value, a), b), 6)
    for factors in _FACTORS.values():
        if a in factors and b in factors:
            return round(value * factors[a] / factors[b], 6)
    raise ValueError(f"cannot convert {from_unit!r} to {to_unit!r}: not known units of the same kind")
