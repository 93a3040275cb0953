"""What every virtual peripheral (the E86 watch, the standard health devices) shares: it is an
async context manager that :meth:`~VirtualPeripheral.start`\\ s on entry and
:meth:`~VirtualPeripheral.stop`\\ s on exit, whatever ended the block."""

from __future__ import annotations

from typing import Self


class VirtualPeripheral:
    """``async with Kind(...) as peripheral: ...``; subclasses provide start() and stop()."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
