"""Codec descriptions and the matching rules between the two legs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

TELEPHONE_EVENT = "telephone-event"
COMFORT_NOISE = "cn"
# Codecs whose payload the gateway relays untouched between legs.
RELAYABLE_AUDIO = frozenset({"opus", "g722", "pcmu", "pcma"})
RELAYABLE_VIDEO = frozenset({"vp8", "h264"})
# Transcoding pairs: a browser-side codec and the plain-side codecs it can be converted to.
TRANSCODABLE = {"opus": ("pcmu", "pcma"), "pcmu": ("opus",), "pcma": ("opus",)}


@dataclass(frozen=True)
class Codec:
    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None
    rtcp_feedback: tuple[str, ...] = field(default=())

    @property
    def key(self) -> tuple[str, int, int]:
        """Identity across legs: the payload type may differ, the format may not."""
        return (self.name.lower(), self.clock_rate, self.channels)

    @property
    def is_telephone_event(self) -> bool:
        return self.name.lower() == TELEPHONE_EVENT

    @property
    def is_media(self) -> bool:
        """A real media format, as opposed to DTMF events or comfort noise."""
        return self.name.lower() not in (TELEPHONE_EVENT, COMFORT_NOISE)

    def with_payload_type(self, payload_type: int) -> Codec:
        return replace(self, payload_type=payload_type)


OPUS = Codec(111, "opus", 48000, 2, "minptime=10;useinbandfec=1")
G722 = Codec(9, "G722", 8000)
PCMU = Codec(0, "PCMU", 8000)
PCMA = Codec(8, "PCMA", 8000)
EVENTS_48K = Codec(110, TELEPHONE_EVENT, 48000, 1, "0-16")
EVENTS_8K = Codec(101, TELEPHONE_EVENT, 8000, 1, "0-16")

# The gateway's own offer when it must make one up (late offer).
GATEWAY_AUDIO = (OPUS, G722, PCMU, PCMA, EVENTS_48K, EVENTS_8K)


def find_codec(codecs: list[Codec], key: tuple[str, int, int]) -> Codec | None:
    return next((codec for codec in codecs if codec.key == key), None)


def first_media_codec(codecs: list[Codec]) -> Codec | None:
    return next((codec for codec in codecs if codec.is_media), None)


def events_for_clock(codecs: list[Codec], clock_rate: int) -> Codec | None:
    """The telephone-event format matching the chosen codec's clock (RFC 4733 section 7.1.1)."""
    return next(
        (c for c in codecs if c.is_telephone_event and c.clock_rate == clock_rate), None
    )


def free_payload_type(codecs: list[Codec], preferred: int) -> int:
    """`preferred` unless the list already uses it, then the first free dynamic type."""
    taken = {codec.payload_type for codec in codecs}
    if preferred not in taken:
        return preferred
    return next(pt for pt in range(96, 128) if pt not in taken)
