"""Overload: 256 concurrent loopback clients against a server with a bounded queue (``benchmarks/load_test.py``).

Slow (about a minute): run with ``pytest -m slow tests/server/test_load.py -s`` to see p50/p99.
"""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.load_test import reference_scores, run_load
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

MAX_QUEUE = 128
CONCURRENCY = 256
PROMPTS_PER_REQUEST = 2


def test_256_concurrent_clients_bounded_queue_nothing_lost_and_recovery(qwen3_rm):
    with ServerProcess(qwen3_rm, "--max-queue-size", str(MAX_QUEUE)) as proc:
        reference = reference_scores(str(qwen3_rm))  # the in-process engine, independent of the server
        report = asyncio.run(
            run_load(
                proc.url,
                reference,
                concurrency=CONCURRENCY,
                duration=15.0,
                prompts_per_request=PROMPTS_PER_REQUEST,
                server_pid=proc.proc.pid,
            )
        )
        print("\n" + report.summary())
        assert report.accepted > CONCURRENCY  # every client got answers, several rounds
        # The queue was full (503 + Retry-After honoured by the clients) and never grew past its bound
        # (a request arriving at an empty queue is admitted whole, hence the + one request).
        assert report.rejected_503 > 0
        assert report.max_queue_depth <= MAX_QUEUE + PROMPTS_PER_REQUEST
        # No accepted request lost, duplicated or answered with another request's scores.
        assert report.dropped == 0 and report.duplicated == 0 and report.mismatched == 0
        assert (
            report.server_errors_5xx == 0 and report.client_errors_4xx == 0 and report.transport_errors == 0
        )
        assert report.latency_p50 is not None and report.latency_p99 is not None
        # Bounded memory: the server's resident set grows by far less than the load it refused.
        assert report.rss_peak_mib - report.rss_before_mib < 512
        # Recovery: queue empty, health ok, single requests correct again.
        assert report.recovered and report.after_correct
        assert "Traceback" not in proc.log()
