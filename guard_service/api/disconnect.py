"""Cancel a non-streaming generation when its client goes away, so the engine stops working for nobody.

(Streaming responses need nothing extra: Starlette cancels the body iterator on disconnect.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    job = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not job.done():
            job.cancel()  # takes effect at the job's next await: wait for it, so it is over before we answer
            await asyncio.gather(job, return_exceptions=True)
    if job.cancelled():
        raise asyncio.CancelledError("client disconnected")
    return job.result()
