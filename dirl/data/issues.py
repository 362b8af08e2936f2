"""Per-item problem log shared by the data stages.

A stage that meets a bad item (missing mask, unreadable file, ...) records it here and goes on; at the end
it writes ``issues.json`` and fails only if the fraction of bad items exceeds ``data.max_bad_fraction``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO


class TooManyBadItems(RuntimeError):
    """More items failed a data stage than ``data.max_bad_fraction`` allows."""


def write_json_atomic(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` through a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class IssueLog:
    """Collects problems per item (``issues``, count as bad) and remarks (``notes``, do not count)."""

    def __init__(self, stage: str = "data", path: Path | str | None = None):
        self.stage = stage
        self.path = Path(path) if path is not None else None  # where write()/check() put issues.json
        self.issues: list[dict[str, str]] = []
        self.notes: list[dict[str, str]] = []
        self.total = 0  # items the stage looked at; set by check() or write(total=...)

    def add(self, item: str, reason: str, stage: str | None = None) -> None:
        """Record that ``item`` is bad because of ``reason`` (``stage`` defaults to the log's stage)."""
        self.issues.append({"item": str(item), "reason": reason, "stage": stage or self.stage})

    def note(self, item: str, reason: str) -> None:
        """Record a remark about ``item`` that does not make it bad (e.g. an optional file absent)."""
        self.notes.append({"item": str(item), "reason": reason})

    def bad_items(self) -> set[str]:
        """Distinct items with at least one issue."""
        return {i["item"] for i in self.issues}

    def __len__(self) -> int:
        """Number of distinct bad items (an item with two problems counts once)."""
        return len(self.bad_items())

    def fraction(self, total: int) -> float:
        """Bad items over ``total``; 0.0 for an empty log, 1.0 when ``total`` is 0 but items are bad."""
        bad = len(self)
        if total <= 0:
            return 1.0 if bad else 0.0
        return bad / total

    def to_dict(self, total: int) -> dict:
        return {
            "stage": self.stage,
            "total": int(total),
            "bad": len(self),
            "fraction": self.fraction(total),
            "issues": self.issues,
            "notes": self.notes,
        }

    def write(self, path: Path | str | None = None, total: int | None = None) -> Path:
        """Write the log as JSON (atomically) to ``path`` or the log's own path; returns the path."""
        if total is not None:
            self.total = total
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError(f"IssueLog({self.stage!r}).write: no path given and none set at construction")
        write_json_atomic(target, self.to_dict(self.total))
        self.path = target
        return target

    def print_summary(self, total: int | None = None, limit: int = 10, file: TextIO | None = None) -> None:
        """Print a count and the first ``limit`` issues to the console (stderr by default)."""
        out = file if file is not None else sys.stderr
        of = f" of {total} ({self.fraction(total):.2%})" if total is not None else ""
        print(f"[{self.stage}] {len(self)} bad item(s){of}, {len(self.notes)} note(s)", file=out)
        for issue in self.issues[:limit]:
            print(f"  {issue['item']}: {issue['reason']}", file=out)
        if len(self.issues) > limit:
            where = f" (all in {self.path})" if self.path else ""
            print(f"  ... and {len(self.issues) - limit} more{where}", file=out)

    def check(self, total: int, max_bad_fraction: float) -> None:
        """Raise ``TooManyBadItems`` if more than ``max_bad_fraction`` of ``total`` items are bad.

        The log is written first when it has a path, so the error can point at the full list.
        """
        self.total = total
        if self.path is not None:
            self.write()
        frac = self.fraction(total)
        if frac <= max_bad_fraction:
            return
        shown = "; ".join(f"{i['item']}: {i['reason']}" for i in self.issues[:5])
        more = f" (+{len(self.issues) - 5} more)" if len(self.issues) > 5 else ""
        where = f"Full list: {self.path}." if self.path else "No issues.json path was set for this log."
        raise TooManyBadItems(
            f"[{self.stage}] {len(self)} of {total} items are bad ({frac:.2%}), above the limit "
            f"data.max_bad_fraction = {max_bad_fraction:.2%}. {where} First: {shown}{more}. "
            f"Fix or remove the bad items, or raise data.max_bad_fraction in params.yaml."
        )
