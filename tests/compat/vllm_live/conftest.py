"""The differential suite against vLLM 0.32's CPU build (``.venv-vllm``): fixtures and the run's record.

Every test here is ``slow`` (vLLM engines take 20-70 s to start; one per checkpoint, shared by a module).
Without ``.venv-vllm`` they are skipped locally with the command that builds it; in CI (``CI`` set) the
environment is built first (``scripts/vllm_env.sh``), so nothing is skipped there.

``compat`` (session fixture) records every comparison; at the end of the session the counts and the table
of deliberate differences are written to ``outputs/vllm_live/compat_table.md``. A passing run with
``VLLM_LIVE_WRITE_TABLE=1`` also replaces its modules' records in ``records/`` (committed), and rebuilds
``COMPAT_TABLE`` and the README's copy of it (section "Measured against vLLM") from every module's record;
``tests/compat/test_vllm_table.py`` keeps the README, the table and the records equal.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.compat.vllm_live.deliberate import DELIBERATE
from tests.compat.vllm_live.oracle import (
    Comparison,
    CompatRecorder,
    diff,
    ensure_vllm,
    max_abs_diff,
    vllm_ready,
)

COMPAT_TABLE = Path(__file__).with_name("compat_table.md")
RECORDS = Path(__file__).with_name("records")
RUN_TABLE = Path(__file__).resolve().parents[3] / "outputs" / "vllm_live" / "compat_table.md"
README = Path(__file__).resolve().parents[3] / "README.md"
#: The README's copy of the table sits between these two lines.
TABLE_BEGIN, TABLE_END = "<!-- vllm-live-table -->", "<!-- /vllm-live-table -->"
_RECORDER = CompatRecorder()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _vllm_available() -> None:
    if not vllm_ready():
        if os.environ.get("CI"):
            ensure_vllm()
        else:
            pytest.skip(
                "vLLM's CPU build is not installed: run `bash scripts/vllm_env.sh` (builds .venv-vllm)"
            )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _RECORDER.comparisons:
        return
    _RECORDER.write(RUN_TABLE, DELIBERATE)
    # The committed records, table and README change only when asked (and the run passed): the run's
    # modules replace their own records, and the table is built from every module's record.
    if os.environ.get("VLLM_LIVE_WRITE_TABLE") == "1" and exitstatus == 0:
        _RECORDER.save_records(RECORDS)
        CompatRecorder.from_records(RECORDS).write(COMPAT_TABLE, DELIBERATE)
        splice_readme(COMPAT_TABLE.read_text())


def splice_readme(table: str) -> None:
    """Put ``table`` between the README's table markers."""
    text = README.read_text()
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    README.write_text(f"{head}{TABLE_BEGIN}\n{table}{TABLE_END}{tail}")


class Compat:
    """``compat.check(surface, case, model, ours, theirs, deliberate=None)``: compare, record, and assert.

    ``deliberate``: the :data:`DELIBERATE` key when this request is known to differ on purpose; the answers
    must then differ (a kept difference that vanished is reported too, so the table stays true).
    """

    def __init__(self, recorder: CompatRecorder) -> None:
        self.recorder = recorder

    def check(
        self,
        surface: str,
        case: str,
        model: str,
        ours: object,
        theirs: object,
        *,
        deliberate: str | None = None,
        atol: float = 1e-5,
    ) -> list[str]:
        """Compare two JSON-able answers; fail unless equal (or, with ``deliberate``, different)."""
        if deliberate is not None and deliberate not in DELIBERATE:
            raise KeyError(f"{deliberate!r} is not in tests/compat/vllm_live/deliberate.py")
        details = diff(ours, theirs, atol=atol)
        current = os.environ.get("PYTEST_CURRENT_TEST", "unknown::").split("::", 1)[0]
        self.recorder.add(
            Comparison(
                surface=surface,
                module=Path(current).stem,
                case=case,
                model=model,
                matched=not details,
                deliberate=deliberate if details else None,
                max_abs_diff=max_abs_diff(ours, theirs),
                details=details,
            )
        )
        if deliberate is None:
            assert not details, f"{surface} {case} on {model}: differs from vLLM:\n" + "\n".join(details[:20])
        else:
            assert details, (
                f"{surface} {case} on {model}: now equal to vLLM; drop {deliberate!r} from DELIBERATE"
            )
        return details


@pytest.fixture(scope="session")
def compat() -> Compat:
    """The session's :class:`Compat` (every comparison is recorded for the table)."""
    return Compat(_RECORDER)
