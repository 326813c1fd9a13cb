"""Client transactions: INVITE (RFC 3261 §17.1.1, RFC 6026 "Accepted") and non-INVITE (§17.1.2).

Timers are loop.call_later handles, never tasks: thousands of concurrent transactions must cost
little more than their messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .errors import SipError
from .flow import Flow, Target
from .message import Request, Response
from .timers import TimedTransaction, TransactionHost

log = logging.getLogger(f"ws2sip.{__name__}")

CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
ACCEPTED = "accepted"
COMPLETED = "completed"
TERMINATED = "terminated"


class ClientTransaction(TimedTransaction):
    def __init__(
        self,
        layer: TransactionHost,
        request: Request,
        target: Target | Flow,
        on_response: Callable[[Response, ClientTransaction], None],
    ) -> None:
        branch = request.top_via.branch
        if not branch:
            raise ValueError(f"{request.method} has no Via branch: cannot start a transaction")
        self.request = request
        self.method = request.method
        self.branch = branch
        self.key = (branch, request.method)
        self.flow: Flow | None = None
        self.is_invite = request.method == "INVITE"
        self.state = CALLING if self.is_invite else TRYING
        self._layer = layer
        self._target = target
        self._on_response = on_response
        self._wire: bytes | None = None
        self._interval = layer.timers.t1
        super().__init__()

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.method} {self.branch} {self.state}>"

    # --- sending -----------------------------------------------------------------------------
    def start(self) -> None:
        timers = self._layer.timers
        self._state_timer = self._layer.loop.call_later(
            timers.b if self.is_invite else timers.f, self._timed_out
        )
        try:
            flow = self._layer.transport.send_request_if_connected(self.request, self._target)
        except SipError as error:
            self._transport_failed(error)
            return
        if flow is None:
            self._layer.spawn(self._connect_and_send())
        else:
            self._sent(flow)

    async def _connect_and_send(self) -> None:
        try:
            flow = await self._layer.transport.send_request(self.request, self._target)
        except SipError as error:
            if self.state != TERMINATED:
                self._transport_failed(error)
            return
        if self.state != TERMINATED:
            self._sent(flow)

    def _sent(self, flow: Flow) -> None:
        self.flow = flow
        if not flow.reliable:
            self._retransmit_timer = self._layer.loop.call_later(self._interval, self._retransmit)

    def _retransmit(self) -> None:
        self._retransmit_timer = None
        if self.flow is None or self.flow.closed:
            return
        if self._wire is None:
            self._wire = self.request.to_bytes()
        self.flow.send(self._wire)
        if self.is_invite:
            self._interval *= 2  # timer A doubles without a cap (§17.1.1.2)
        elif self.state == PROCEEDING:
            self._interval = self._layer.timers.t2
        else:
            self._interval = min(self._interval * 2, self._layer.timers.t2)
        self._retransmit_timer = self._layer.loop.call_later(self._interval, self._retransmit)

    # --- receiving ---------------------------------------------------------------------------
    def receive_response(self, response: Response) -> None:
        if self.is_invite:
            self._receive_invite_response(response)
        else:
            self._receive_non_invite_response(response)

    def _receive_invite_response(self, response: Response) -> None:
        state = self.state
        status = response.status
        if state in (CALLING, PROCEEDING):
            if status < 200:
                self.state = PROCEEDING
                self._stop_timers()  # timer B only guards the Calling state
            elif status < 300:
                self._stop_timers()
                self.state = ACCEPTED
                self._state_timer = self._layer.loop.call_later(
                    self._layer.timers.m, self.terminate
                )
            else:
                self._stop_timers()
                self.state = COMPLETED
                self._send_ack(response)
                self._deliver(response)
                # After the delivery: over a reliable transport this ends the transaction now,
                # and an ended transaction delivers nothing more.
                self._schedule_end(self._layer.timers.timer_d)
                return
            self._deliver(response)
        elif state == ACCEPTED:
            if 200 <= status < 300:
                self._deliver(response)  # 2xx retransmissions and forks go to the TU (RFC 6026)
        elif state == COMPLETED and status >= 300:
            self._send_ack(response)

    def _receive_non_invite_response(self, response: Response) -> None:
        if self.state not in (TRYING, PROCEEDING):
            return
        if response.status < 200:
            self.state = PROCEEDING
            self._deliver(response)
        else:
            self._stop_timers()
            self.state = COMPLETED
            self._deliver(response)
            self._schedule_end(self._layer.timers.t4)  # after the delivery, as above

    def _schedule_end(self, linger: float) -> None:
        """Linger to absorb retransmitted responses on UDP; reliable transports end at once."""
        if self.flow is None or self.flow.reliable:
            self.terminate()
        else:
            self._state_timer = self._layer.loop.call_later(linger, self.terminate)

    def _send_ack(self, response: Response) -> None:
        if self.flow is None or self.flow.closed:
            return
        self.flow.send(self.ack_for(response).to_bytes())

    def ack_for(self, response: Response) -> Request:
        """The ACK for a non-2xx final response (§17.1.1.3): same branch, To from the response."""
        ack = self._derived_request("ACK")
        to = response.get("to")
        if to is not None:
            ack.set("To", to)
        return ack

    def cancel_request(self) -> Request:
        """The CANCEL for this INVITE (§9.1), to be sent to self.flow in its own transaction."""
        if not self.is_invite:
            raise ValueError(f"Only an INVITE can be cancelled, not {self.method}")
        return self._derived_request("CANCEL")

    def _derived_request(self, method: str) -> Request:
        original = self.request
        derived = Request(method, original.uri)
        derived.add("Via", original.get_all("via")[0])
        for route in original.get_all("route"):
            derived.add("Route", route)
        derived.add("Max-Forwards", "70")
        for name in ("From", "To", "Call-ID"):
            value = original.get(name)
            if value is not None:
                derived.add(name, value)
        derived.add("CSeq", f"{original.cseq.number} {method}")
        return derived

    def _deliver(self, response: Response) -> None:
        try:
            self._on_response(response, self)
        except Exception:
            log.exception("%r: response handler failed on %d", self, response.status)

    # --- ending ------------------------------------------------------------------------------
    def _timed_out(self) -> None:
        self._state_timer = None
        log.info("%r: no final response, timing out with 408", self)
        self._finish_with(self.request.response(408, "Request Timeout"))

    def _transport_failed(self, error: SipError) -> None:
        log.info("%r: transport error: %s", self, error)
        self._finish_with(self.request.response(503, "Service Unavailable"))

    def _finish_with(self, synthesized: Response) -> None:
        if self._end():
            self._deliver(synthesized)
            self._release_handler()

    def terminate(self) -> None:
        if self._end():
            self._release_handler()

    def _end(self) -> bool:
        """Moves to Terminated; False when the transaction had already ended."""
        if self.state == TERMINATED:
            return False
        self.state = TERMINATED
        self._stop_timers()
        self._layer.forget(self)
        return True

    def _release_handler(self) -> None:
        # The handler is usually a closure over the proxy's branch, which holds this
        # transaction: a reference cycle that only a full collection would free, and full
        # collections are rare under the gateway's collector settings (gateway/app.py).
        # An ended transaction delivers nothing more, so it lets go of its handler.
        self._on_response = _drop_response


def _drop_response(response: Response, transaction: ClientTransaction) -> None:
    """The handler of an ended client transaction: nothing is delivered after the end."""
