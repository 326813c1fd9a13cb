"""Background tasks (per request, per connection): kept referenced until done, and their failures
logged. asyncio holds only a weak reference to a task, so one nobody keeps can vanish mid-run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    def __init__(self, log: logging.Logger, what: str) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._log = log
        self._what = what

    def spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        """Run the coroutine in a task kept until it ends; its result, if any, is dropped."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def run_eagerly(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run the coroutine now, up to its first suspension, and in a task only from there
        on, as Python 3.12's eager tasks do. A REGISTER answered from the in-memory stores never
        suspends, and a task per message (its creation, scheduling, step and done callback) was
        a tenth of the gateway's CPU per REGISTER. Unlike 3.12's, the first step runs outside
        any task: only for coroutines that use nothing task-bound (asyncio.timeout,
        current_task) before they first suspend."""
        try:
            awaited = coroutine.send(None)
        except StopIteration:
            return
        except Exception as error:
            self._log.error("%s failed", self._what, exc_info=error)
            return
        self.spawn(_resume(coroutine, awaited))

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("%s failed", self._what, exc_info=task.exception())

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def _resume(coroutine: Coroutine[Any, Any, None], awaited: Any) -> None:
    """Drive a coroutine that suspended on `awaited` (what its send() returned) as its own task
    would: wait for the future, then resume the coroutine, which takes the future's result or
    exception itself. Cancelling this task cancels the future the coroutine waits on, as
    Task.cancel() does."""
    while True:
        cancelled: asyncio.CancelledError | None = None
        if awaited is None:  # a bare yield (asyncio.sleep(0)): resume on the next loop turn
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError as error:
                cancelled = error
        else:
            try:
                await awaited
            except BaseException:  # the coroutine receives the outcome from send() below
                if not awaited.done():  # this task was cancelled, not the future
                    awaited.cancel()
        try:
            awaited = coroutine.send(None) if cancelled is None else coroutine.throw(cancelled)
        except StopIteration:
            return
