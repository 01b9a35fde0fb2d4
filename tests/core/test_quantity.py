"""Kubernetes quantities."""

from __future__ import annotations

from decimal import Decimal

import pytest

from vcplugin.core.quantity import QuantityError, parse_quantity, quantity_int, quantity_milli


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3k", Decimal(3000)),
        ("8Gi", Decimal(8 * 2**30)),
        ("500m", Decimal("0.5")),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("16", Decimal(16)),
        ("1.5", Decimal("1.5")),
        ("2M", Decimal(2_000_000)),
        ("512Mi", Decimal(512 * 2**20)),
        ("1Ki", Decimal(1024)),
        ("1Ti", Decimal(2**40)),
        ("100n", Decimal("1e-7")),
        ("10u", Decimal("1e-5")),
        ("1G", Decimal(10**9)),
        (" 4 ", Decimal(4)),
        (7, Decimal(7)),
        (0.25, Decimal("0.25")),
    ],
)
def test_parse_quantity(text: object, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "   ", "abc", "1.2.3", "Gi", "5Xi", "nan", "inf", True, None, [1]])
def test_parse_quantity_rejects(text: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_rounding_up() -> None:
    assert quantity_int("500m") == 1
    assert quantity_int("2") == 2
    assert quantity_int("1.01") == 2
    assert quantity_milli("500m") == 500
    assert quantity_milli("2") == 2000
    assert quantity_milli("0.1") == 100
    assert quantity_milli("1.0005") == 1001
