"""Shutdown is bounded: a background task that does not finish after its cancellation is named
in the log (with where it waits) and the service stops without it; the consumer's MQTT
disconnect does not queue behind a default executor full of store calls."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from ingest import service
from vitalgate.mqtt_session import in_own_thread


async def test_a_task_that_ignores_its_cancellation_is_named_and_left_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # a clean-up that never ends (until the test lets it go)

    async def polite() -> None:
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(stubborn(), name="stubborn"),
             asyncio.create_task(polite(), name="polite")]
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="ingest.service"):
        await service._cancel_all(tasks, 0.2)
    assert tasks[1].cancelled()
    assert not tasks[0].done()
    named = [r.getMessage() for r in caplog.records if "did not stop" in r.getMessage()]
    assert len(named) == 1 and "stubborn" in named[0] and "test_shutdown.py" in named[0], named
    release.set()
    await asyncio.gather(tasks[0], return_exceptions=True)


async def test_the_mqtt_stop_runs_while_the_default_executor_is_full() -> None:
    """Every worker of the default executor blocked (store calls of cancelled tasks): the stop
    still runs at once, in a thread of its own."""
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    blockers = [loop.run_in_executor(None, gate.wait) for _ in range(64)]  # > any pool size
    ran = threading.Event()
    try:
        await asyncio.wait_for(in_own_thread(ran.set, name="test-stop"), 5)
        assert ran.is_set()
    finally:
        gate.set()
        await asyncio.gather(*blockers)


async def test_an_error_in_the_own_thread_reaches_the_awaiting_task() -> None:
    def fail() -> None:
        raise OSError("socket already closed")

    with pytest.raises(OSError, match="socket already closed"):
        await in_own_thread(fail, name="test-stop")
