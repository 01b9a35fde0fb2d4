"""Live progress of the demo on stderr: a small table redrawn in place on a terminal, a line every few
steps otherwise (CI logs, pipes). Plain ANSI escapes, no dependency."""

from __future__ import annotations

import os
import shutil
import sys
from typing import TextIO

from .run import Sample
from .workload import Plan

_UP = "\x1b[{n}F"  # cursor to the start of the line n lines up
_CLEAR_LINE = "\x1b[2K"


class LiveProgress:
    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, width: int = 28):
        self.out = stream or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.width = width
        encoding = (getattr(self.out, "encoding", None) or "").lower()
        self.full, self.empty = ("█", "░") if encoding.startswith("utf") else ("#", ".")
        self.drawn = 0  # lines of the live table on screen
        self.status_shown = False
        self.every = 1

    # --- Progress protocol ----------------------------------------------------------------------

    def status(self, message: str) -> None:
        if self.tty:
            self.out.write(f"\r{_CLEAR_LINE}{message} ...")
            self.status_shown = True
        else:
            self.out.write(f"{message} ...\n")
        self.out.flush()

    def begin(self, plan: Plan) -> None:
        if self.tty and self.status_shown:
            self.out.write(f"\r{_CLEAR_LINE}")
            self.status_shown = False
        self.every = max(1, plan.steps // 6)
        gpus = sum(n.type.gpus for n in plan.nodes)
        self.out.write(
            f"Replaying {plan.pod_count} pods in {len(plan.jobs)} Volcano Jobs on {len(plan.nodes)} nodes "
            f"({gpus} GPUs), {plan.steps} scheduling sessions\n"
        )
        self.out.flush()

    def update(self, sample: Sample, plan: Plan) -> None:
        if self.tty:
            self._draw(self.table(sample, plan))
        elif (sample.step + 1) % self.every == 0 or sample.step + 1 == plan.steps:
            self.out.write(self.line(sample, plan) + "\n")
            self.out.flush()

    def end(self) -> None:
        if self.tty and self.status_shown:
            self.out.write(f"\r{_CLEAR_LINE}")
            self.status_shown = False
        self.out.flush()

    # --- rendering ------------------------------------------------------------------------------

    def bar(self, done: int, total: int) -> str:
        filled = round(self.width * done / total) if total else self.width
        return self.full * filled + self.empty * (self.width - filled)

    def table(self, s: Sample, plan: Plan) -> list[str]:
        mig = 100 * s.mig_used / s.mig_total if s.mig_total else 0
        hami = 100 * s.hami_used / s.hami_total if s.hami_total else 0
        return [
            f"  step {s.step + 1:>3}/{plan.steps} {self.bar(s.step + 1, plan.steps)} {s.elapsed:6.1f} s",
            f"  pods       placed {s.placed:>4}   running {s.running:>4}   pending {s.pending:>4}   "
            f"departed {s.departed:>4}",
            f"  GPUs       busy {s.gpus_busy:>3}/{s.gpus:<3}  memory promised {s.memory_percent:3.0f}% "
            f"(MIG {mig:3.0f}%, HAMi-core {hami:3.0f}%)",
            f"  MIG        instances {s.mig_instances:>3}   created {s.created:>4}   destroyed {s.destroyed:>4}   "
            f"geometry switches {s.switches:>3}",
        ]

    def line(self, s: Sample, plan: Plan) -> str:
        return (
            f"step {s.step + 1}/{plan.steps}: placed {s.placed}, running {s.running}, pending {s.pending}, "
            f"GPUs busy {s.gpus_busy}/{s.gpus}, memory {s.memory_percent:.0f}%, MIG instances {s.mig_instances}, "
            f"geometry switches {s.switches} ({s.elapsed:.1f} s)"
        )

    def _draw(self, lines: list[str]) -> None:
        if self.status_shown:
            self.out.write(f"\r{_CLEAR_LINE}")
            self.status_shown = False
        if self.drawn:
            self.out.write(_UP.format(n=self.drawn))
        # A line wider than the terminal wraps, and moving up by our line count would no longer land on
        # the table's first line.
        width = self._columns() - 1
        for line in lines:
            self.out.write(f"{_CLEAR_LINE}{line[:width]}\n")
        self.drawn = len(lines)
        self.out.flush()

    def _columns(self) -> int:
        """The width of the terminal we draw on (stderr; stdout may be a pipe)."""
        try:
            return os.get_terminal_size(self.out.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return shutil.get_terminal_size((120, 24)).columns
