"""The one place the signalling parts are built and connected: the node's addresses, GRUUs and
flow tokens, the dialog table, the forwarding engine, target selection, the proxy and the
registrar. The gateway (gateway.app), `ws2sip selfcheck` and the in-process tests all wire them
through wire_signalling, so each part receives what it needs and owns only what it creates.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sip.transaction import TransactionLayer
from sip.transport import TransportLayer

from .auth import Authenticator
from .dialog_events import DialogEventNotifier
from .dialogs import DEFAULT_MAX_DIALOGS, DialogTable
from .flowtoken import FlowTokens
from .forking import ForwardingEngine
from .gruu import Gruus
from .location import LocationService
from .media import MediaAnchor
from .proxy import Proxy, ProxyPolicy
from .registrar import Registrar, RegistrarPolicy
from .routing import LocalAddresses, TrunkTrust
from .targets import Targets


@dataclass(eq=False, slots=True)
class Signalling:
    addresses: LocalAddresses
    gruus: Gruus
    dialogs: DialogTable
    engine: ForwardingEngine
    targets: Targets
    proxy: Proxy
    registrar: Registrar
    dialog_events: DialogEventNotifier

    async def close(self) -> None:
        """Stop the INVITE timers and release every dialog (their media sessions go back to
        the anchor, which its owner closes afterwards)."""
        self.engine.close()
        self.dialog_events.close()
        self.dialogs.close()
        await asyncio.sleep(0)  # let the releases' tasks run


def wire_signalling(
    *, proxy_policy: ProxyPolicy, registrar_policy: RegistrarPolicy,
    transactions: TransactionLayer, transport: TransportLayer, location: LocationService,
    auth: Authenticator, secret: bytes, media: MediaAnchor | None = None,
    max_dialogs: int = DEFAULT_MAX_DIALOGS,
) -> Signalling:
    tokens = FlowTokens(secret)
    addresses = LocalAddresses(proxy_policy.domain, proxy_policy.public_address, tokens,
                               proxy_policy.node_id)
    gruus = Gruus(secret)
    dialogs = DialogTable(media.release if media is not None else None, max_dialogs)
    engine = ForwardingEngine(transactions, transport, addresses, secret,
                              proxy_policy.invite_timeout)
    transactions.on_stray_response = engine.on_stray_response
    targets = Targets(
        domain=proxy_policy.domain, node_id=proxy_policy.node_id,
        max_calls_per_user=proxy_policy.max_calls_per_user, trunks=proxy_policy.trunks,
        location=location, transport=transport, addresses=addresses, gruus=gruus,
        tokens=tokens, dialogs=dialogs, user_exists=auth.user_exists,
    )
    proxy = Proxy(
        node_id=proxy_policy.node_id, engine=engine, targets=targets, transport=transport,
        auth=auth, tokens=tokens, addresses=addresses, trust=TrunkTrust(proxy_policy.trunks),
        dialogs=dialogs, media=media,
    )
    # Busy lamps for the gateway's own users: it sees their calls, their browsers do not notify.
    dialog_events = DialogEventNotifier(domain=proxy_policy.domain, transactions=transactions,
                                        transport=transport,
                                        public_address=proxy_policy.public_address)
    dialogs.on_state = dialog_events.dialog_changed
    proxy.dialog_events = dialog_events
    registrar = Registrar(registrar_policy, location, auth, addresses.is_local_uri, gruus)
    return Signalling(addresses, gruus, dialogs, engine, targets, proxy, registrar,
                      dialog_events)
