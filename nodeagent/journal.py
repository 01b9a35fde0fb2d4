"""On-disk record of the MIG instances this agent created, so a restarted agent knows which
instances are its own (and may be destroyed) and which it must never touch.

An intent is written (and fsynced) before a GPU instance is created, so a crash at any later point
leaves the instance recognisable as ours."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec


class Owned(msgspec.Struct, omit_defaults=True):
    gpu: str  # GPU UUID
    profile_id: int
    start: int
    size: int
    pod_uid: str = ""
    pod: str = ""
    gi_id: int = -1  # -1 until the GPU instance exists
    mig_uuid: str = ""

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.gpu, self.start, self.size)


class _File(msgspec.Struct):
    version: int = 1
    owned: list[Owned] = []


class Journal:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[tuple[str, int, int], Owned] = {}
        if self.path is not None and self.path.exists():
            data = msgspec.json.decode(self.path.read_bytes(), type=_File)
            self.entries = {e.key: e for e in data.owned}

    def get(self, gpu: str, start: int, size: int) -> Owned | None:
        return self.entries.get((gpu, start, size))

    def owns(self, gpu: str, start: int, size: int, profile_id: int) -> bool:
        e = self.entries.get((gpu, start, size))
        return e is not None and e.profile_id == profile_id

    def put(self, entry: Owned) -> None:
        self.entries[entry.key] = entry
        self._save()

    def drop(self, gpu: str, start: int, size: int) -> None:
        if self.entries.pop((gpu, start, size), None) is not None:
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(_File(owned=sorted(self.entries.values(), key=lambda e: e.key))))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
