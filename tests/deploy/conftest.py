"""Deployment tests: the image recipe, the Helm chart, the example configs.

The chart tests render helm/vgpu-pool with a real Helm engine (tests/deploy/chart.py); they skip,
saying so, only when there is none."""

from __future__ import annotations

import pytest

from .chart import NO_ENGINE_REASON, engine

requires_helm = pytest.mark.skipif(engine() is None, reason=NO_ENGINE_REASON)


def pytest_report_header() -> str:
    return f"helm engine: {engine() or 'none (chart tests skip)'}"
