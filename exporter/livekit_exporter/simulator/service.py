"""What the simulator's faces share: each is started and stopped around an `async with` block."""

from __future__ import annotations

from typing import Self


class Service:
    """`async with service:` starts it, and stops it at the end of the block."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
