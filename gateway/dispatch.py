"""Which part of the gateway answers an incoming request: the registrar, the OPTIONS answer, or
the proxy. It runs for every request, so it is compiled (setup.py) with the code it calls."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Final

from sip.flow import Flow
from sip.message import Request, Response
from sip.server_transaction import ServerTransaction
from sip.tasks import TaskSet

from .proxy import Proxy
from .registrar import SUPPORTED, Registrar
from .routing import LocalAddresses

ALLOWED_METHODS: Final = (
    "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, UPDATE, PRACK, INFO, MESSAGE, REFER, "
    "NOTIFY, SUBSCRIBE, PUBLISH"
)
_MAX_COUNTED_METHODS: Final = 64  # methods are client-chosen tokens: bound the set
# Retry-After (seconds) of the 503 a draining node answers new calls with: by then the load
# balancer has moved the client's next connection to another node.
DRAINING_RETRY_AFTER: Final = 5


class RequestCounts:
    """Requests received, by method, for /metrics (gateway.metrics reads them when scraped):
    plain integers, where a Prometheus counter takes a lock for every increment."""

    def __init__(self) -> None:
        self.by_method: dict[str, int] = {}

    def count(self, method: str) -> None:
        counts = self.by_method
        current = counts.get(method)
        if current is None:
            if len(counts) >= _MAX_COUNTED_METHODS:
                method = "other"
            current = counts.get(method, 0)
        counts[method] = current + 1


class RequestDispatch:
    """The transaction layer's on_request (and on_stray_ack)."""

    def __init__(
        self, *, domain: str, registrar: Registrar, proxy: Proxy, addresses: LocalAddresses,
        tasks: TaskSet, answer_register_eagerly: bool, counts: RequestCounts,
    ) -> None:
        self._domain = domain.lower()
        self._addresses = addresses
        self._registrar = registrar
        self._proxy = proxy
        self._tasks = tasks
        self._counts = counts
        # With in-process stores nothing in a REGISTER's answer suspends, so it runs without a
        # task of its own; Redis needs one (its client also uses asyncio.timeout, task-only).
        self._answer_register: Callable[[Coroutine[Any, Any, None]], None] = (
            tasks.run_eagerly if answer_register_eagerly else tasks.spawn
        )
        # Set by a drain (gateway/lifecycle.py): new calls get 503; calls in progress go on.
        self.refuse_new_calls = False

    def __call__(self, request: Request, transaction: ServerTransaction | None) -> None:
        if transaction is None:
            return  # stray ACKs come through stray_ack, with their flow
        self._counts.count(request.method)
        method = request.method
        if method == "REGISTER" and self._is_for_us(request):
            self._answer_register(self._registrar.answer(request, transaction))
        elif method == "OPTIONS" and self._is_for_us(request) and not request.ruri.user:
            transaction.respond(_options_response(request))
        elif method == "INVITE" and self.refuse_new_calls and request.to.tag is None:
            response = request.response(503, "Draining", to_tag=request.stable_tag())
            response.add("Retry-After", str(DRAINING_RETRY_AFTER))
            transaction.respond(response)
        else:
            self._tasks.spawn(self._proxy.handle_request(request, transaction))

    def stray_ack(self, ack: Request, flow: Flow) -> None:
        """The transaction layer's on_stray_ack: an ACK for a 2xx, relayed by the proxy."""
        self._counts.count("ACK")
        self._proxy.handle_stateless(ack, flow)

    def _is_for_us(self, request: Request) -> bool:
        host = request.ruri.host.lower()
        return host == self._domain or host in self._addresses.hosts


def _options_response(request: Request) -> Response:
    response = request.response(200, to_tag=request.stable_tag())
    response.add("Allow", ALLOWED_METHODS)
    response.add("Supported", SUPPORTED)
    response.add("Accept", "application/sdp")
    return response
