"""The SIP protocol: messages, URIs, digest authentication, transactions and transports."""

from pathlib import Path

from . import message


def parser_is_compiled() -> bool:
    """Whether the parser modules run as setup.py's mypyc build rather than as Python."""
    return Path(message.__file__ or "").suffix != ".py"
