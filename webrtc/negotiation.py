"""Codec choices between the legs: what to offer the other side, and what an answer means."""

from __future__ import annotations

from dataclasses import dataclass

from .codecs import (
    OPUS,
    PCMA,
    PCMU,
    RELAYABLE_AUDIO,
    RELAYABLE_VIDEO,
    TRANSCODABLE,
    Codec,
    events_for_clock,
    find_codec,
    first_media_codec,
    free_payload_type,
)
from .errors import MediaError

_TRANSCODE_TARGETS = {"opus": OPUS, "pcmu": PCMU, "pcma": PCMA}
# Feedback the far end of a relayed stream can honour through RTCP translation. Bandwidth
# estimation feedback (transport-cc, goog-remb) would have to come from the gateway itself,
# which does not generate it, so it is not negotiated.
RELAYABLE_FEEDBACK = frozenset({"nack", "nack pli", "ccm fir"})


def relayable(kind: str, codecs: list[Codec]) -> list[Codec]:
    allowed = RELAYABLE_AUDIO if kind == "audio" else RELAYABLE_VIDEO
    return [c for c in codecs if c.name.lower() in allowed]


def offer_codecs(kind: str, offered: list[Codec], *, for_webrtc: bool) -> list[Codec]:
    """The codecs to offer the other leg: the offerer's relayable ones in its order and with
    its payload types, then codecs the gateway could transcode to, then telephone-events for
    each clock rate in use. RTCP feedback is kept only towards the WebRTC leg."""
    chosen = [webrtc_feedback(c) if for_webrtc else _without_feedback(c)
              for c in relayable(kind, offered)]
    if kind != "audio":
        return chosen
    names = {c.name.lower() for c in chosen}
    for codec in list(chosen):
        for partner in TRANSCODABLE.get(codec.name.lower(), ()):
            if partner not in names:
                template = _TRANSCODE_TARGETS[partner]
                chosen.append(template.with_payload_type(
                    free_payload_type(offered + chosen, template.payload_type)))
                names.add(partner)
    for rate in dict.fromkeys(c.clock_rate for c in chosen):  # in order of first use
        events = events_for_clock(offered, rate)
        if events is None and any(c.is_telephone_event for c in offered):
            template = next(c for c in offered if c.is_telephone_event)
            events = Codec(free_payload_type(offered + chosen, 101), template.name, rate, 1,
                           "0-16")
        if events is not None and events.payload_type not in {c.payload_type for c in chosen}:
            chosen.append(events)
    return chosen


@dataclass(frozen=True)
class Agreement:
    """The outcome for one m-line: each leg's codec and DTMF format, relay or transcode."""

    offerer_codec: Codec
    answerer_codec: Codec
    offerer_events: Codec | None
    answerer_events: Codec | None

    @property
    def transcoding(self) -> bool:
        return self.offerer_codec.key != self.answerer_codec.key


def agree(kind: str, offered: list[Codec], answered: list[Codec]) -> Agreement:
    """Map the answerer's first codec onto the offerer's list: same codec (relay), else a
    transcoding partner, else 488."""
    answer_codec = first_media_codec(answered)
    if answer_codec is None:
        raise MediaError(reason=f"{kind} answer has no media codec")
    offer_codec = find_codec(offered, answer_codec.key)
    if offer_codec is None and kind == "audio":
        partners = TRANSCODABLE.get(answer_codec.name.lower(), ())
        offer_codec = next((c for c in offered if c.name.lower() in partners), None)
    if offer_codec is None:
        raise MediaError(reason=f"no common or transcodable {kind} codec for "
                                f"{answer_codec.name}/{answer_codec.clock_rate}")
    answer_events = events_for_clock(answered, answer_codec.clock_rate)
    offer_events = events_for_clock(offered, offer_codec.clock_rate) if answer_events else None
    return Agreement(
        offerer_codec=offer_codec, answerer_codec=answer_codec,
        offerer_events=offer_events, answerer_events=answer_events if offer_events else None,
    )


def webrtc_feedback(codec: Codec) -> Codec:
    """The codec with only the RTCP feedback the relay can honour."""
    kept = tuple(f for f in codec.rtcp_feedback if f in RELAYABLE_FEEDBACK)
    return Codec(codec.payload_type, codec.name, codec.clock_rate, codec.channels, codec.fmtp,
                 kept)


def _without_feedback(codec: Codec) -> Codec:
    return Codec(codec.payload_type, codec.name, codec.clock_rate, codec.channels, codec.fmtp)
