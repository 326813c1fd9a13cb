"""Compact JSON for bindings and node records as stored in Redis.

A binding is a JSON array `[1, <Binding fields in declaration order>]`: positional rather than
named because it is written on every REGISTER and read on every lookup, and arrays are about
half the size and faster to encode. The leading 1 is the format version, so a later layout can
be told apart from this one (version 1 had no push parameters).
"""

from __future__ import annotations

import json

from .model import Binding, NodeInfo

# 2 added the RFC 8599 push parameters (pn_provider, pn_prid, pn_param) at the end; a version 1
# binding, written before, reads as one without them.
_FORMAT_VERSION = 2
_VERSION_WITHOUT_PUSH = 1
_BINDING_FIELDS = Binding.FIELDS
_PATH_INDEX = _BINDING_FIELDS.index("path")
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_binding(binding: Binding) -> str:
    return _encode([_FORMAT_VERSION, *binding.values()])


def decode_binding(text: str | bytes) -> Binding:
    version, *values = json.loads(text)
    if version != _FORMAT_VERSION and version != _VERSION_WITHOUT_PUSH:
        raise ValueError(f"stored binding has format version {version}, expected {_FORMAT_VERSION}")
    # JSON has no tuples; restore the declared type so bindings compare equal after a round trip.
    values[_PATH_INDEX] = tuple(values[_PATH_INDEX])
    return Binding(*values)


def encode_node(info: NodeInfo) -> str:
    return _encode([info.node_id, info.sip_address, info.started_at])


def decode_node(text: str | bytes) -> NodeInfo:
    node_id, sip_address, started_at = json.loads(text)
    return NodeInfo(node_id, sip_address, started_at)
