"""Server transactions: INVITE (RFC 3261 §17.2.1 with RFC 6026 "Accepted") and non-INVITE
(§17.2.2). Timers are loop.call_later handles, never tasks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from .flow import Flow
from .message import Request, Response
from .timers import TimedTransaction, TransactionHost

log: Final = logging.getLogger(f"ws2sip.{__name__}")

TRYING: Final = "trying"
PROCEEDING: Final = "proceeding"
ACCEPTED: Final = "accepted"
COMPLETED: Final = "completed"
CONFIRMED: Final = "confirmed"
TERMINATED: Final = "terminated"

ServerKey = tuple[str, ...]


class ServerTransaction(TimedTransaction):
    def __init__(
        self, layer: TransactionHost, request: Request, flow: Flow, key: ServerKey
    ) -> None:
        self.request = request
        self.flow = flow
        self.method = request.method
        self.id = key
        self.is_invite = request.method == "INVITE"
        self.state = PROCEEDING if self.is_invite else TRYING
        self.on_terminated: Callable[[], None] | None = None
        self._layer = layer
        self._last_response: Response | None = None
        self._cancelled = False
        self._acked = False
        self._interval = layer.timers.t1
        super().__init__()

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.method} {self.id[0]} {self.state}>"

    @property
    def last_response(self) -> Response | None:
        return self._last_response

    @property
    def cancelled(self) -> bool:
        """A CANCEL matching this INVITE arrived; the TU answers it (487 or a final response)."""
        return self._cancelled

    @property
    def acked(self) -> bool:
        """An ACK arrived for the final response (for a 2xx: only tracked with retransmit_2xx)."""
        return self._acked

    def mark_cancelled(self) -> None:
        self._cancelled = True

    # --- TU → network ------------------------------------------------------------------------
    def respond(self, response: Response, *, retransmit_2xx: bool = False) -> None:
        """Send a response through the state machine.

        retransmit_2xx is for a UAS core (§13.3.1.4): over UDP the 2xx to an INVITE is resent
        at T1, 2T1… capped at T2 until the ACK arrives or timer L ends the transaction. A proxy
        leaves it off: the UAS downstream retransmits and the proxy forwards those."""
        status = response.status
        state = self.state
        if state == TERMINATED or state in (COMPLETED, CONFIRMED):
            log.info("%r: dropping %d sent after the final response", self, status)
            return
        if state == ACCEPTED:
            if 200 <= status < 300:
                self._send(response)
            else:
                log.info("%r: dropping %d after a 2xx", self, status)
            return
        self._last_response = response
        self._send(response)
        if status < 200:
            if not self.is_invite:
                self.state = PROCEEDING
            return
        timers = self._layer.timers
        if not self.is_invite:
            self.state = COMPLETED
            self._end_after(timers.j)
        elif status < 300:
            self.state = ACCEPTED
            self._state_timer = self._layer.loop.call_later(timers.l, self.terminate)
            if retransmit_2xx:
                self._layer.await_ack(self)
                if not self.flow.reliable:
                    self._schedule_retransmit()
        else:
            self.state = COMPLETED
            self._state_timer = self._layer.loop.call_later(timers.h, self._ack_timed_out)
            if not self.flow.reliable:
                self._schedule_retransmit()

    def respond_statelessly(self, response: Response) -> None:
        """Send a final response once and end the transaction at once, as Kamailio's
        sl_send_reply does: nothing retransmits it and nothing is kept. For challenges to
        unauthenticated requests, whose source may be spoofed: a 407 to an INVITE sent through
        the state machine over UDP is resent (timer G) until timer H, about 20 times the
        request's size toward the victim. A retransmitted request is simply answered again."""
        if self.state != TRYING and self.state != PROCEEDING:
            log.info("%r: dropping %d sent after the final response", self, response.status)
            return
        self._last_response = response
        self._send(response)
        self.terminate()

    def send_trying(self) -> None:
        """§17.2.1's 100 for an INVITE, unless the TU has answered it already: a stateless
        challenge then goes out alone (one response per request, no amplification)."""
        if self.state == PROCEEDING and self._last_response is None:
            self.respond(self.request.response(100, "Trying"))

    def _send(self, response: Response) -> None:
        try:
            self._layer.transport.send_response(response, self.flow)
        except Exception:
            # A response that cannot be routed is a transport error for this transaction
            # (§17.2.4): report it and keep the layer alive.
            log.exception("%r: cannot send %d", self, response.status)

    def _schedule_retransmit(self) -> None:
        self._retransmit_timer = self._layer.loop.call_later(self._interval, self._retransmit)

    def _retransmit(self) -> None:
        self._retransmit_timer = None
        if self._last_response is None:
            return
        self._send(self._last_response)
        self._interval = min(self._interval * 2, self._layer.timers.t2)  # timer G (and 2xx)
        self._schedule_retransmit()

    # --- network → transaction ---------------------------------------------------------------
    def handle_retransmission(self) -> None:
        """The request arrived again: answer with the latest response (none yet in Trying)."""
        if self.state == ACCEPTED:
            return  # RFC 6026 §8.7: absorbed; the TU's 2xx retransmissions cover it
        if self._last_response is not None and self.state in (PROCEEDING, COMPLETED):
            self._send(self._last_response)

    def handle_ack(self) -> bool:
        """ACK with this transaction's branch; True when absorbed here (non-2xx ACK)."""
        if self.state == COMPLETED:
            self._stop_timers()
            self._acked = True
            self.state = CONFIRMED
            self._end_after(self._layer.timers.t4)  # timer I
            return True
        return self.state == CONFIRMED

    def ack_received(self) -> None:
        """The ACK for our retransmitted 2xx arrived (matched by dialog, not by branch)."""
        self._acked = True
        if self._retransmit_timer is not None:
            self._retransmit_timer.cancel()
            self._retransmit_timer = None

    # --- ending ------------------------------------------------------------------------------
    def _ack_timed_out(self) -> None:
        self._state_timer = None
        log.info("%r: no ACK for %s (timer H)", self,
                 self._last_response.status if self._last_response else "-")
        self.terminate()

    def _end_after(self, linger: float) -> None:
        if self.flow.reliable:
            self.terminate()
        else:
            self._state_timer = self._layer.loop.call_later(linger, self.terminate)

    def terminate(self) -> None:
        if self.state == TERMINATED:
            return
        self.state = TERMINATED
        self._stop_timers()
        self._layer.forget(self)
        on_terminated, self.on_terminated = self.on_terminated, None
        # Let go of the callback (usually a closure over this transaction, a reference cycle)
        # so that reference counting frees the transaction.
        if on_terminated is not None:
            try:
                on_terminated()
            except Exception:
                log.exception("%r: on_terminated failed", self)
