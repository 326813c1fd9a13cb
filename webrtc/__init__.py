"""Media plane: anchors WebRTC (ICE, DTLS-SRTP, rtcp-mux) to plain RTP, relaying or transcoding."""

from .errors import MediaError
from .relay import MediaRelay
from .session import MediaSession, Side

__all__ = ["MediaError", "MediaRelay", "MediaSession", "Side"]
