"""Sending from a virtual peripheral over a link that may drop at any moment.

A virtual device (watch or health device) sends notifications and indications while its
central may disconnect: bumble then cancels the pending indication, which must be counted
and survived, not end the device. Two bumble behaviours make this subtle, and this module is
the one place that handles them: a failed send arrives as ``CancelledError`` too (only our own
task's cancellation may propagate), and a cancellation of our task that lands while an
indication is pending can be swallowed (so it is re-raised afterwards).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def send_or_drop(name: str, send: Callable[[], Awaitable[None]]) -> bool:
    """Await ``send()``; True if it completed, False if the link dropped under it (the caller
    counts the drop). Our own task's cancellation always propagates, even when swallowed."""
    try:
        await send()
        sent = True
    except (Exception, asyncio.CancelledError) as exc:
        if _cancelling():
            raise
        log.debug("%s: send failed: %r", name, exc)
        sent = False
    if _cancelling():  # bumble may swallow a cancellation that lands mid-indication
        raise asyncio.CancelledError
    return sent


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` until every one has ended: a cancellation bumble swallowed (above) is
    delivered again, once a second."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
