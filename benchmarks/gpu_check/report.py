"""How a check ends (PASS, FAIL, SKIP, N/A), the JSON report written after every check, and the table."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("PASS", "FAIL", "SKIP", "N/A")


class CheckFailed(Exception):
    """A check's condition did not hold (the message says which)."""


class Skipped(Exception):
    """A check that cannot run here (the message says why)."""


class NotApplicable(Exception):
    """A CUDA-only part on a CPU: what could be checked passed (the message says what)."""


def skip(reason: str) -> Callable[[], Any]:
    """A check that only reports SKIP with ``reason``."""

    def check() -> Any:
        raise Skipped(reason)

    return check


@dataclass
class Report:
    """Check results, the benchmark table and the JSON file they are written to."""

    out: Path
    meta: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def run(self, name: str, fn: Callable[[], tuple[str, dict[str, Any]] | str]) -> str:
        """Run one check; any exception is that check's FAIL, never the run's."""
        t0 = time.perf_counter()
        data: dict[str, Any] = {}
        try:
            result = fn()
            detail, data = result if isinstance(result, tuple) else (result, {})
            status = "PASS"
        except Skipped as e:
            status, detail = "SKIP", str(e)
        except NotApplicable as e:
            status, detail = "N/A", str(e)
        except CheckFailed as e:
            status, detail = "FAIL", str(e)
        except Exception as e:  # noqa: BLE001 - a crash is this check's failure, the others still run
            status, detail = "FAIL", f"{type(e).__name__}: {e}"
            data = {"traceback": traceback.format_exc()}
        self.checks.append(
            {
                "name": name,
                "status": status,
                "detail": detail,
                "seconds": time.perf_counter() - t0,
                **({"data": data} if data else {}),
            }
        )
        print(
            f"[{time.perf_counter() - self.started:6.1f}s] {status} {name}: {detail}",
            file=sys.stderr,
            flush=True,
        )
        self.write()
        return status

    def counts(self) -> dict[str, int]:
        """How many checks ended in each status."""
        return {s: sum(c["status"] == s for c in self.checks) for s in STATUSES}

    def line(self, check: dict[str, Any]) -> str:
        """The final line of one check: its status, name and detail."""
        return f"{check['status']} {check['name']}" + (f": {check['detail']}" if check["detail"] else "")

    def write(self) -> None:
        """Write the report as JSON to ``out`` (and into ``$OUT`` when that is set)."""
        report = {
            **self.meta,
            "wall_s": time.perf_counter() - self.started,
            "checks": self.checks,
            "table": self.table,
            "summary": self.counts(),
        }
        text = json.dumps(report, indent=2, default=str)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(text)
        if os.environ.get("OUT"):
            with contextlib.suppress(OSError):
                Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
                (Path(os.environ["OUT"]) / self.out.name).write_text(text)


def format_row(r: dict[str, Any]) -> str:
    """One benchmark row as a Markdown table line."""
    return (
        f"| {r['workload']} | {r['model']} | {r['method']} | {r['dtype']} | {r['median_s']:.3f} | "
        f"{r['items_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_mib']:.0f} | "
        f"{r.get('max_abs_diff_vs_engine', float('nan')):.1e} |"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """The benchmark rows as a Markdown table."""
    head = (
        "| workload | model | method | dtype | median s | items/s | tokens/s | peak MiB | max abs diff vs engine |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(format_row(r) for r in rows)])
