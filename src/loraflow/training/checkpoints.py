"""Training checkpoints in the object store, so a retried run resumes where the last one stopped.

Layout under ``prefix``: ``step-000012/<file>`` for each checkpoint, then ``latest.json`` naming
the newest complete one; it is written last, so a checkpoint cut off mid-write is never used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from loraflow.errors import NotFoundError
from loraflow.storage import ObjectStore


@dataclass
class Checkpoint:
    step: int
    files: dict[str, bytes]


class CheckpointStore:
    """Save and find checkpoints of one fine-tune."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")

    def save(self, step: int, files: dict[str, bytes]) -> str:
        """Store ``files`` as the checkpoint of ``step`` and make it the latest; returns its key."""
        folder = f"{self.prefix}/step-{step:06d}"
        for name, data in files.items():
            self.store.put(f"{folder}/{name}", data)
        pointer = json.dumps({"step": step, "folder": folder, "files": sorted(files)})
        self.store.put(f"{self.prefix}/latest.json", pointer.encode())
        return folder

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None when there is none."""
        try:
            pointer = json.loads(self.store.get_bytes(f"{self.prefix}/latest.json"))
        except NotFoundError:
            return None
        files = {n: self.store.get_bytes(f"{pointer['folder']}/{n}") for n in pointer["files"]}
        return Checkpoint(step=pointer["step"], files=files)
