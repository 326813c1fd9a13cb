"""TaskSet.run_eagerly: a coroutine runs at once, and in a task only once it suspends."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sip.tasks import TaskSet

log = logging.getLogger("test.tasks")


async def test_a_coroutine_that_never_suspends_completes_within_the_call() -> None:
    done: list[str] = []

    async def answer() -> None:
        done.append("answered")

    tasks_before = asyncio.all_tasks()
    TaskSet(log, "test").run_eagerly(answer())
    assert done == ["answered"]
    assert asyncio.all_tasks() == tasks_before


async def test_a_suspended_coroutine_gets_its_futures_result_and_finishes() -> None:
    loop = asyncio.get_running_loop()
    lookup: asyncio.Future[str] = loop.create_future()
    steps: list[str] = []
    finished = asyncio.Event()

    async def answer() -> None:
        steps.append("before")
        steps.append(await lookup)
        await asyncio.sleep(0)  # a bare yield on the way resumes too
        steps.append("after")
        finished.set()

    TaskSet(log, "test").run_eagerly(answer())
    assert steps == ["before"]
    lookup.set_result("result")
    await asyncio.wait_for(finished.wait(), 5)
    assert steps == ["before", "result", "after"]


async def test_the_futures_exception_is_raised_inside_the_coroutine() -> None:
    lookup: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    caught: list[BaseException] = []
    finished = asyncio.Event()

    async def answer() -> None:
        try:
            await lookup
        except ConnectionError as error:
            caught.append(error)
        finished.set()

    TaskSet(log, "test").run_eagerly(answer())
    lookup.set_exception(ConnectionError("store down"))
    await asyncio.wait_for(finished.wait(), 5)
    assert [str(error) for error in caught] == ["store down"]


@pytest.mark.parametrize("suspension", ["future", "sleep0"])
async def test_cancelling_the_set_cancels_a_suspended_coroutine(suspension: str) -> None:
    lookup: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    outcome: list[str] = []
    finished = asyncio.Event()

    async def answer() -> None:
        try:
            if suspension == "future":
                await lookup
            else:
                while True:
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            finished.set()
            raise

    tasks = TaskSet(log, "test")
    tasks.run_eagerly(answer())
    await asyncio.sleep(0)
    tasks.cancel_all()
    await asyncio.wait_for(finished.wait(), 5)
    assert outcome == ["cancelled"]
    if suspension == "future":
        assert lookup.cancelled()


async def test_a_failure_in_the_first_step_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def answer() -> None:
        raise ValueError("broken handler")

    with caplog.at_level(logging.ERROR, logger="test.tasks"):
        TaskSet(log, "request handling").run_eagerly(answer())
    assert "request handling failed" in caplog.text
    assert "broken handler" in caplog.text
