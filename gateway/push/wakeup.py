"""Waking a sleeping device for a request that waits for it (RFC 8599 §5.3.2 / §6).

A request for a user whose push binding has no live flow sends a push and waits for the
device's REGISTER, on this node or on any other of the cluster:

- `Wakeups` is where REGISTERs of push devices are announced: the registrar calls
  `registered(aor)`, waiters on this node are woken at once, and with Redis the AoR is
  published on `<prefix>:push:registered` so that a node waiting for the same AoR wakes too.
  Only push-capable REGISTERs are published, and every node hears each: one PUBLISH per
  push-device registration, cheap beside the REGISTER's own location write.
- `DeviceWake` is one request waiting: it pushes to every sleeping binding, repeats the push
  every `repeat` seconds, and as soon as a device is back on a live flow hands its new binding
  to the proxy (`reach`). It ends after `wait` seconds, when every device came, or when the
  proxy stops it (the caller cancelled, the call was answered elsewhere or timed out). A push
  was sent and the device never came: the app gets the CALL_CANCELLED push, so that iOS
  CallKit ends the call it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from sip.tasks import TaskSet

from ..location import Binding, LocationService
from .provider import PushKind, PushOutcome, PushRequest, PushResult

log = logging.getLogger(f"ws2sip.{__name__}")

# Seconds between attempts to resubscribe after Redis dropped the subscription.
RESUBSCRIBE_DELAY = 1.0

Send = Callable[[Binding, PushRequest], Awaitable[PushResult]]


class Watch:
    """One waiter's view of the registrations of an AoR: `wait()` returns when one came."""

    def __init__(self, wakeups: Wakeups, aor: str) -> None:
        self.aor = aor
        self._event = asyncio.Event()
        self._wakeups = wakeups

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Until a registration of the AoR (or notify()) or `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), max(timeout, 0.0))
        self._event.clear()

    def close(self) -> None:
        self._wakeups.forget(self)


class Wakeups:
    def __init__(self, node_id: str, redis_url: str | None, key_prefix: str = "ws2sip") -> None:
        self._node_id = node_id
        self._watches: dict[str, set[Watch]] = {}
        self._channel = f"{key_prefix}:push:registered"
        self._redis = aioredis.Redis.from_url(redis_url, decode_responses=True) \
            if redis_url else None
        self._listener: asyncio.Task[None] | None = None
        self._tasks = TaskSet(log, "push registration announcement")

    async def start(self) -> None:
        """Subscribe before returning (with Redis): no registration announced afterwards is
        missed."""
        if self._redis is None:
            return
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel)
        self._listener = asyncio.create_task(self._listen(pubsub), name="push wakeups")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        self._tasks.cancel_all()
        if self._redis is not None:
            await self._redis.aclose()

    def watch(self, aor: str) -> Watch:
        watch = Watch(self, aor)
        self._watches.setdefault(aor, set()).add(watch)
        return watch

    def forget(self, watch: Watch) -> None:
        watches = self._watches.get(watch.aor)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.aor]

    @property
    def waiting(self) -> int:
        """AoRs some request on this node waits for."""
        return len(self._watches)

    def registered(self, aor: str) -> None:
        """A push device of `aor` registered on this node (the registrar's hook)."""
        self._notify(aor)
        if self._redis is not None:
            self._tasks.spawn(self._publish(aor))

    def _notify(self, aor: str) -> None:
        for watch in self._watches.get(aor, ()):
            watch.notify()

    async def _publish(self, aor: str) -> None:
        assert self._redis is not None
        try:
            await self._redis.publish(self._channel, f"{self._node_id} {aor}")
        except aioredis.RedisError as error:
            log.warning("announcing the registration of %s to the cluster failed: %s", aor,
                        error)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    node_id, _, aor = str(message["data"]).partition(" ")
                    if node_id != self._node_id:  # ours were notified without Redis
                        self._notify(aor)
            except aioredis.RedisError as error:
                log.warning("push wakeups: Redis subscription lost (%s); resubscribing", error)
                await asyncio.sleep(RESUBSCRIBE_DELAY)
                with contextlib.suppress(aioredis.RedisError):
                    await pubsub.subscribe(self._channel)


@dataclass(frozen=True, slots=True)
class WakePolicy:
    wait: float  # seconds a request waits for the device's REGISTER
    repeat: float  # seconds between pushes while waiting (APNs does not guarantee delivery)


class WakeMetrics:
    """What the waits report; the push service turns it into Prometheus metrics."""

    def woken(self, seconds: float) -> None:
        """A device registered `seconds` after its first push."""

    def lost(self) -> None:
        """A call whose device never came within the wait."""


class PushWaker:
    def __init__(
        self, *, wakeups: Wakeups, location: LocationService, send: Send, policy: WakePolicy,
        is_asleep: Callable[[Binding], bool], metrics: WakeMetrics | None = None,
    ) -> None:
        self._wakeups = wakeups
        self._location = location
        self._send = send
        self.policy = policy
        self._is_asleep = is_asleep
        self._metrics = metrics or WakeMetrics()
        self._tasks = TaskSet(log, "device wake")

    def start(
        self, aor: str, sleeping: list[Binding], request: PushRequest,
        reach: Callable[[Binding], Awaitable[bool]], done: Callable[[], None],
    ) -> DeviceWake:
        """Wake the devices of `sleeping` (bindings of `aor`) for `request`. `reach` gets each
        device's new binding (False: the request no longer wants it); `done` is called once,
        when the wait is over."""
        wake = DeviceWake(self, aor, sleeping, request, reach, done)
        self._tasks.spawn(wake.run())
        return wake

    def close(self) -> None:
        self._tasks.cancel_all()


class DeviceWake:
    def __init__(
        self, waker: PushWaker, aor: str, sleeping: list[Binding], request: PushRequest,
        reach: Callable[[Binding], Awaitable[bool]], done: Callable[[], None],
    ) -> None:
        self._waker = waker
        self._aor = aor
        # Devices still waited for, by push token: a device that comes back without its
        # +sip.instance (a new Contact, a new binding) is still recognised by its token.
        self._waiting = {binding.pn_prid: binding for binding in sleeping}
        self._request = request
        self._reach = reach
        self._done = done
        self._stopped = False
        self._cancelled = False
        self._watch = waker._wakeups.watch(aor)
        self.reached = 0

    def stop(self, *, cancelled: bool) -> None:
        """The request needs no device any more (`cancelled`: the caller gave up)."""
        if self._stopped:
            return
        self._stopped = True
        self._cancelled = cancelled
        self._watch.notify()

    async def run(self) -> None:
        waker = self._waker
        policy = waker.policy
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + policy.wait
        next_push = started
        first_push: float | None = None
        try:
            # The watch exists before the first push: a REGISTER it provokes cannot be missed.
            while self._waiting and not self._stopped:
                await self._reach_returned(first_push)
                now = loop.time()
                if not self._waiting or self._stopped or now >= deadline:
                    break
                if now >= next_push:
                    await self._push_all(self._request)
                    if first_push is None:
                        first_push = now
                    next_push = now + policy.repeat
                    continue  # the pushes took time: look again before waiting
                await self._watch.wait(min(deadline, next_push) - now)
        finally:
            self._watch.close()
            self._finish(first_push is not None)

    def _finish(self, pushed: bool) -> None:
        if pushed and self._waiting:
            # Pushed and never reached (the caller gave up, another device answered, the wait
            # ran out): tell those apps the call is over.
            cancel = PushRequest(PushKind.CALL_CANCELLED, self._request.call_id,
                                 self._request.caller, self._request.callee)
            self._waker._tasks.spawn(self._push_all(cancel))
        if self.reached == 0 and not self._cancelled and not self._stopped and \
                self._request.kind is PushKind.INCOMING_CALL:
            log.info("call %s lost: %s did not register within %.0f s of the push",
                     self._request.call_id, self._aor, self._waker.policy.wait)
            self._waker._metrics.lost()
        self._done()

    async def _reach_returned(self, first_push: float | None) -> None:
        """Hand every device that is back on a live flow to the request."""
        bindings = await self._waker._location.lookup(self._aor)
        for binding in bindings:
            if binding.pn_prid not in self._waiting or self._waker._is_asleep(binding):
                continue
            del self._waiting[binding.pn_prid]
            if first_push is not None:
                self._waker._metrics.woken(asyncio.get_running_loop().time() - first_push)
            if self._stopped:
                continue
            if await self._reach(binding):
                self.reached += 1
            else:
                self.stop(cancelled=False)

    async def _push_all(self, request: PushRequest) -> None:
        bindings = list(self._waiting.values())
        results = await asyncio.gather(*(self._waker._send(b, request) for b in bindings))
        for binding, result in zip(bindings, results, strict=True):
            if result.outcome is PushOutcome.INVALID_TOKEN:
                # The service dropped the token from the binding; nothing can wake that device.
                self._waiting.pop(binding.pn_prid, None)
