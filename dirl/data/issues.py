"""Per-item problem log shared by the data stages.

A stage that meets a bad item (missing mask, unreadable file, ...) records it here and goes on; at the end
it writes ``issues.json`` and fails only if the fraction of bad items exceeds ``data.max_bad_fraction``.

Three kinds of entries: ``issues`` (the item is bad: it counts against ``max_bad_fraction``), exclusions
(the item was dropped on purpose by a filter, e.g. the <= 50 % foreground rule: a note, not an error, but
counted and named) and plain ``notes`` (remarks that drop nothing). The fraction is taken over every item the
stage saw, the bad and excluded ones included.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from dirl.io import write_json_atomic
from dirl.workspace import RESULTS

CONSOLE_LIMIT = 20  # bad items named on the console; beyond that the console points at the full report


class TooManyBadItems(RuntimeError):
    """More items failed a data stage than ``data.max_bad_fraction`` allows."""


class IssueLog:
    """Collects problems per item (``issues``, count as bad) and remarks (``notes``, do not count)."""

    def __init__(self, stage: str = "data", path: Path | str | None = None):
        self.stage = stage
        self.path = Path(path) if path is not None else None  # where write()/check() put issues.json
        self.issues: list[dict[str, str]] = []
        self.notes: list[dict] = []
        self.total = 0  # items the stage looked at; set by check() or write(total=...)
        self.max_bad_fraction: float | None = None  # the limit check() applied, once it ran
        self.error: str | None = None  # why the stage failed, when it did (written into the report)

    def add(self, item: str, reason: str, stage: str | None = None) -> None:
        """Record that ``item`` is bad because of ``reason`` (``stage`` defaults to the log's stage)."""
        self.issues.append({"item": str(item), "reason": reason, "stage": stage or self.stage})

    def note(self, item: str, reason: str) -> None:
        """Record a remark about ``item`` that does not make it bad (e.g. an optional file absent)."""
        self.notes.append({"item": str(item), "reason": reason})

    def exclude(self, item: str, reason: str) -> None:
        """Record that a filter dropped ``item`` on purpose: a note (not bad), counted in ``excluded``."""
        self.notes.append({"item": str(item), "reason": reason, "excluded": True})

    def bad_items(self) -> set[str]:
        """Distinct items with at least one issue."""
        return {i["item"] for i in self.issues}

    def excluded_items(self) -> set[str]:
        """Distinct items a filter dropped on purpose."""
        return {n["item"] for n in self.notes if n.get("excluded")}

    def __len__(self) -> int:
        """Number of distinct bad items (an item with two problems counts once)."""
        return len(self.bad_items())

    def fraction(self, total: int) -> float:
        """Bad items over ``total``; 0.0 for an empty log, 1.0 when ``total`` is 0 but items are bad."""
        bad = len(self)
        if total <= 0:
            return 1.0 if bad else 0.0
        return bad / total

    def passed(self, total: int | None = None) -> bool | None:
        """Whether the bad fraction is within the limit check() applied (None before check())."""
        if self.max_bad_fraction is None:
            return None
        return self.fraction(self.total if total is None else total) <= self.max_bad_fraction

    def to_dict(self, total: int) -> dict:
        out = {
            "stage": self.stage,
            "total": int(total),
            "bad": len(self),
            "excluded": len(self.excluded_items()),
            "fraction": self.fraction(total),
            "max_bad_fraction": self.max_bad_fraction,
            "passed": self.passed(total),
            "issues": self.issues,
            "notes": self.notes,
        }
        if self.error:
            out["error"] = self.error
        return out

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

    def _by_item(self) -> dict[str, list[str]]:
        """Bad item -> its reasons, in the order items were first reported."""
        out: dict[str, list[str]] = {}
        for issue in self.issues:
            out.setdefault(issue["item"], []).append(issue["reason"])
        return out

    def print_summary(self, total: int | None = None, limit: int = CONSOLE_LIMIT, file: TextIO | None = None) -> None:
        """Print a count and the bad items to the console (stderr by default).

        Every bad item is named when there are at most ``limit``; otherwise the first ``limit`` and the path of
        the full report.
        """
        out = file if file is not None else sys.stderr
        of = f" of {total} ({self.fraction(total):.2%})" if total is not None else ""
        excluded = len(self.excluded_items())
        ex = f", {excluded} excluded by filters" if excluded else ""
        where = f"; report: {self.path}" if self.path else ""
        print(f"[{self.stage}] {len(self)} bad item(s){of}{ex}, {len(self.notes) - excluded} note(s){where}", file=out)
        items = list(self._by_item().items())
        for item, reasons in items[:limit]:
            print(f"  {item}: {'; '.join(reasons)}", file=out)
        if len(items) > limit:
            full = f": all in {self.path}" if self.path else ""
            print(f"  ... and {len(items) - limit} more bad item(s){full}", file=out)

    def check(self, total: int, max_bad_fraction: float, file: TextIO | None = None) -> None:
        """Raise ``TooManyBadItems`` if more than ``max_bad_fraction`` of ``total`` items are bad.

        The full log is written first when it has a path (on success and on failure), so the error can point at
        it; on failure the bad items are also printed (``print_summary``) before the error is raised.
        """
        self.total = total
        self.max_bad_fraction = max_bad_fraction
        frac = self.fraction(total)
        failed = frac > max_bad_fraction
        if failed:
            self.error = (
                f"{len(self)} of {total} items are bad ({frac:.2%}), above "
                f"data.max_bad_fraction = {max_bad_fraction:.2%}"
            )
        if self.path is not None:
            self.write()
        if not failed:
            return
        self.print_summary(total, file=file)
        items = list(self._by_item())
        shown = ", ".join(items[:CONSOLE_LIMIT])
        more = f" (+{len(items) - CONSOLE_LIMIT} more)" if len(items) > CONSOLE_LIMIT else ""
        where = f"Full report: {self.path}." if self.path else "No issues.json path was set for this log."
        raise TooManyBadItems(
            f"[{self.stage}] {len(self)} of {total} items are bad ({frac:.2%}), above the limit "
            f"data.max_bad_fraction = {max_bad_fraction:.2%}. {where} Bad: {shown}{more}. "
            f"Fix or remove the bad items, or raise data.max_bad_fraction in params.yaml."
        )


class StageReport:
    """``with StageReport(stage) as issues``: the stage's IssueLog, reporting to ``results/<stage>/issues.json``.

    The report of an earlier run is removed on entry, so a stale one never stays behind. The full report is
    written whatever happens: ``IssueLog.check`` writes it on success and when there are too many bad items
    (then also naming them on the console); any other failure writes what was found so far, with the error.
    """

    def __init__(self, stage: str):
        self.path = RESULTS / stage / "issues.json"
        self.path.unlink(missing_ok=True)
        self.issues = IssueLog(stage, self.path)

    def __enter__(self) -> IssueLog:
        return self.issues

    def __exit__(self, kind, error, tb) -> None:
        if error is not None:
            self.issues.error = f"{kind.__name__}: {error}" if str(error) else kind.__name__
            try:
                self.issues.write()
            except OSError:
                pass  # the original error matters more


def finish_stage(stage: str, summary: dict, issues: IssueLog | None = None, total: int = 0) -> dict:
    """Write ``results/<stage>/``: issues.json, summary.json and the DVC metrics file (items in, rows out, bad items),
    and print the stage's one-line summary."""
    out = RESULTS / stage
    out.mkdir(parents=True, exist_ok=True)
    if issues is not None:
        issues.write(out / "issues.json", total=total)
        if len(issues) or issues.notes:
            issues.print_summary(total)
    write_json_atomic(out / "summary.json", summary)
    # what `dvc metrics show` lists, in columns shared by the three data stages: items in, rows out, bad items
    write_json_atomic(
        out / "metrics.json",
        {
            "items": summary.get("items", summary.get("real_images", total)),
            "rows": summary.get("rows", summary.get("composites", summary.get("items"))),
            "bad": summary.get("bad", 0),
        },
    )
    print(f"[{stage}] " + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list))))
    return summary
