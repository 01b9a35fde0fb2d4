"""Kubernetes resource quantities ("3k", "8Gi", "500m", "1e3") as exact numbers."""

from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, Decimal] = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


class QuantityError(ValueError):
    pass


def parse_quantity(value: object) -> Decimal:
    """Parse a Kubernetes quantity; numbers pass through. Raises QuantityError with the bad text."""
    if isinstance(value, bool):
        raise QuantityError(f"invalid quantity {value!r}")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if not isinstance(value, str):
        raise QuantityError(f"invalid quantity {value!r}")
    text = value.strip()
    if not text:
        raise QuantityError("empty quantity")
    number, suffix = text, ""
    if text[-2:] in _SUFFIXES and len(text) > 2:
        number, suffix = text[:-2], text[-2:]
    elif text[-1] in _SUFFIXES and not text[-1].isdigit():
        number, suffix = text[:-1], text[-1]
    if suffix in ("E",) and any(c in number for c in "eE"):
        raise QuantityError(f"invalid quantity {value!r}")
    try:
        base = Decimal(number)
    except InvalidOperation:
        raise QuantityError(f"invalid quantity {value!r}") from None
    if not base.is_finite():
        raise QuantityError(f"invalid quantity {value!r}")
    return base * _SUFFIXES[suffix]


def quantity_int(value: object) -> int:
    """A quantity rounded up to an integer, as Kubernetes' Value() does."""
    q = parse_quantity(value)
    i = int(q)
    return i + 1 if q > i else i


def quantity_milli(value: object) -> int:
    """A quantity in thousandths, rounded up (cpu: milli-cores)."""
    return quantity_int(parse_quantity(value) * 1000)
