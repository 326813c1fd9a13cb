"""Digest authentication: RFC 7616 vectors, server verification, client round trips."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip import digest
from sip.digest import (
    DigestAlgorithm,
    DigestChallenge,
    DigestCredentials,
    DigestServer,
    VerifyOutcome,
    build_authorization,
    compute_ha1,
    parse_challenge,
    parse_credentials,
    select_challenge,
)
from sip.errors import SipError

# RFC 7616 §3.9.1: user "Mufasa", password "Circle of Life".
RFC_REALM = "http-auth@example.org"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_MD5_RESPONSE = "8ca523f5e9506fed4657c9700eebdbec"
RFC_SHA256_RESPONSE = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"

REALM = "ws2sip.test"
SECRET = b"shared-cluster-secret"


class ManualClock:
    """A real clock source the test advances explicitly, to age nonces without sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rfc_challenge(algorithm: str) -> DigestChallenge:
    return parse_challenge(
        f'Digest realm="{RFC_REALM}", qop="auth, auth-int", algorithm={algorithm},'
        f' nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}"'
    )


@pytest.mark.parametrize(
    ("algorithm", "cnonce", "expected"),
    [("MD5", RFC_CNONCE, RFC_MD5_RESPONSE), ("SHA-256", RFC_CNONCE, RFC_SHA256_RESPONSE)],
)
def test_rfc7616_example_response(algorithm: str, cnonce: str, expected: str) -> None:
    header = build_authorization(
        rfc_challenge(algorithm),
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        nc=1,
        cnonce=cnonce,
    )
    creds = parse_credentials(header)
    assert creds.response == expected
    assert creds.nc == "00000001"
    assert creds.cnonce == cnonce
    assert creds.opaque == RFC_OPAQUE
    assert creds.algorithm == algorithm


def test_rfc7616_example_via_stored_ha1() -> None:
    ha1 = compute_ha1("Mufasa", RFC_REALM, "Circle of Life", "SHA-256")
    header = build_authorization(
        rfc_challenge("SHA-256"),
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        ha1=ha1,
        cnonce=RFC_CNONCE,
    )
    assert parse_credentials(header).response == RFC_SHA256_RESPONSE


def test_compute_ha1_known_values() -> None:
    assert compute_ha1("Mufasa", RFC_REALM, "Circle of Life") == "3d78807defe7de2157e2b0b6573a855f"
    assert len(compute_ha1("a", "b", "c", "SHA-256")) == 64
    assert compute_ha1("a", "b", "c", "sha-256") == compute_ha1("a", "b", "c", "SHA-256")
    with pytest.raises(ValueError, match="unsupported digest algorithm"):
        compute_ha1("a", "b", "c", "SHA-512-256")


def test_parse_credentials_handles_spacing_order_escapes_and_case() -> None:
    creds = parse_credentials(
        'digest   RESPONSE = "ABCDEF" ,uri="sip:ws2sip.test",\r\n nonce="n",'
        ' username = "al\\"ice\\\\", realm="ws2sip.test", qop=auth, NC=0000000a,'
        ' cnonce="c1", algorithm=sha-256 ,  opaque="o"  '
    )
    assert creds == DigestCredentials(
        username='al"ice\\',
        realm="ws2sip.test",
        nonce="n",
        uri="sip:ws2sip.test",
        response="ABCDEF",
        algorithm="SHA-256",
        qop="auth",
        nc="0000000a",
        cnonce="c1",
        opaque="o",
    )


def test_parse_credentials_defaults_to_md5_without_qop() -> None:
    creds = parse_credentials('Digest username="a", realm="r", nonce="n", uri="u", response="x"')
    assert creds.algorithm == DigestAlgorithm.MD5
    assert creds.qop is None and creds.nc is None and creds.cnonce is None


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("", "missing auth scheme"),
        ("Basic dXNlcjpwYXNz", "unsupported scheme"),
        ("Digest", "no parameters"),
        ('Digest username="a", realm="r", nonce="n", uri="u"', "missing response"),
        ('Digest username="a, realm="r"', "unparsable"),
        ('Digest username="a" realm="r"', "unparsable"),
        ('Digest username="a", username="b"', "duplicate parameter"),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
            "qop without nc and cnonce",
        ),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth,'
            ' nc=1, cnonce="c"',
            "not 8 hex digits",
        ),
        ("Digest username=", "unparsable"),
        ('Digest ="x"', "unparsable"),
    ],
)
def test_parse_credentials_rejects_garbage_with_400(header: str, why: str) -> None:
    with pytest.raises(SipError) as raised:
        parse_credentials(header)
    assert raised.value.status == 400
    assert raised.value.reason.startswith("Bad Authorization header: ")
    assert why in raised.value.reason


@given(st.text())
def test_parse_credentials_only_raises_sip_error(text: str) -> None:
    try:
        parse_credentials(text)
    except SipError as error:
        assert error.status == 400


@given(st.text(alphabet='Digest usernamrlocq=,"\\ \t\r\n-01aB'))
def test_parse_credentials_only_raises_sip_error_on_near_miss_text(text: str) -> None:
    try:
        parse_credentials(text)
    except SipError as error:
        assert error.status == 400


_AUTH_PARAM_TEXT = st.text(alphabet='Digest usernamrlocq=,"\\ \t\r\n-01aB\x0bé')


def _tokenized_or_error(text: str, start: int) -> dict[str, str] | str:
    try:
        return digest._tokenized_auth_params(text, start, "Authorization")
    except SipError as error:
        return error.reason


@given(_AUTH_PARAM_TEXT)
def test_plain_auth_param_split_agrees_with_the_tokenizer(text: str) -> None:
    """The split-based fast path answers only where the strict tokenizer would give the same."""
    header = "Digest " + text
    plain = digest._plain_auth_params(header, len("Digest "))
    if plain is not None:
        assert plain == _tokenized_or_error(header, len("Digest "))


# Lists built from parameters (known and unknown names, quoted values with commas, quotes and
# escapes, tokens, stray whitespace and empty elements): random text rarely forms a valid one.
_PARAM_NAME = st.sampled_from(["username", "realm", "Nonce", "uri", "nc", "qop", "a", "b"])
_LWS_TEXT = st.text(alphabet=" \t\r\n\x0b", max_size=2)
_PARAM_VALUE = st.one_of(
    st.text(alphabet='ab0 ,=\t"\\', max_size=4).map(lambda value: f'"{value}"'),
    st.text(alphabet="ab1-", max_size=3),
)
_PARAM_ELEMENT = st.tuples(
    _LWS_TEXT, _PARAM_NAME, _LWS_TEXT, _LWS_TEXT, _PARAM_VALUE, _LWS_TEXT
).map(lambda parts: f"{parts[0]}{parts[1]}{parts[2]}={parts[3]}{parts[4]}{parts[5]}")
_PARAM_LIST = st.lists(st.one_of(_PARAM_ELEMENT, _LWS_TEXT), max_size=6).map(",".join)


@settings(max_examples=2000)
@given(_PARAM_LIST)
def test_plain_auth_param_split_agrees_with_the_tokenizer_on_param_lists(text: str) -> None:
    header = "Digest " + text
    for _ in range(2):  # the second time through, the gaps between quoted values are memoised
        plain = digest._plain_auth_params(header, len("Digest "))
        if plain is not None:
            assert plain == _tokenized_or_error(header, len("Digest "))


def test_plain_auth_param_split_takes_what_clients_send_and_leaves_the_rest() -> None:
    jssip = (
        'Digest algorithm=MD5, username="alice", realm="example.com", nonce="a-b_c", '
        'uri="sip:example.com", response="0a1b", qop=auth, cnonce="x1", nc=00000001'
    )
    start = len("Digest ")
    for usual in (jssip, 'Digest uri="sip:a;x=1,2", username="u"'):  # a comma inside quotes
        assert digest._plain_auth_params(usual, start) == _tokenized_or_error(usual, start)
    for unusual in (
        'Digest username="a\\"b"',  # an escaped quote
        'Digest username="a", username="b"',
        "Digest username=a b",
        'Digest username="a',
    ):
        assert digest._plain_auth_params(unusual, start) is None, unusual


@given(st.text())
def test_parse_challenge_only_raises_sip_error(text: str) -> None:
    try:
        parse_challenge(text)
    except SipError as error:
        assert error.status == 400


def make_server(clock: ManualClock, **options: object) -> DigestServer:
    return DigestServer(REALM, SECRET, clock=clock, **options)  # type: ignore[arg-type]


def answer(
    server: DigestServer,
    *,
    password: str = "secret",
    username: str = "alice",
    method: str = "REGISTER",
    nc: int = 1,
    challenge_value: str | None = None,
) -> DigestCredentials:
    challenge = select_challenge([challenge_value] if challenge_value else server.challenge())
    header = build_authorization(
        challenge,
        method=method,
        uri=f"sip:{REALM}",
        username=username,
        password=password,
        nc=nc,
    )
    return parse_credentials(header)


def ha1_for(creds: DigestCredentials, password: str = "secret") -> str:
    return compute_ha1(creds.username, REALM, password, creds.algorithm)


def test_challenge_offers_sha256_first_with_qop_and_opaque() -> None:
    values = DigestServer(REALM, SECRET).challenge()
    challenges = [parse_challenge(value) for value in values]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.qop_options == ("auth",) for c in challenges)
    assert all(c.opaque and c.realm == REALM and not c.stale for c in challenges)
    assert parse_challenge(DigestServer(REALM, SECRET).challenge(stale=True)[0]).stale


def test_round_trip_ok_with_each_algorithm() -> None:
    clock = ManualClock()
    for algorithm in ("SHA-256", "MD5", "SHA-256-sess", "MD5-sess"):
        server = make_server(clock, algorithms=(algorithm,))
        creds = answer(server)
        assert creds.algorithm == algorithm
        assert server.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.OK


def test_client_picks_sha256_when_both_offered() -> None:
    server = make_server(ManualClock())
    creds = answer(server)
    assert creds.algorithm == "SHA-256"
    assert select_challenge(list(reversed(server.challenge()))).algorithm == "SHA-256"


def test_nonces_are_unique_and_a_forked_child_does_not_reuse_pooled_random_bytes() -> None:
    server = DigestServer("example.com", b"secret")
    assert len({server.new_nonce() for _ in range(2000)}) == 2000  # many within one millisecond
    digest._random_bytes(8)  # the pool now holds bytes a child would inherit
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write_end, digest._random_bytes(16))
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    from_child = os.read(read_end, 16)
    os.close(read_end)
    assert len(from_child) == 16
    assert from_child != digest._random_bytes(16)


def test_nonce_from_another_node_sharing_the_secret_verifies() -> None:
    clock = ManualClock()
    creds = answer(make_server(clock))
    other_node = make_server(clock)
    assert other_node.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.OK


def test_nonce_signed_with_another_secret_is_wrong() -> None:
    clock = ManualClock()
    creds = answer(DigestServer(REALM, b"other-secret", clock=clock))
    assert make_server(clock).verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.WRONG


def test_forged_nonce_is_wrong() -> None:
    clock = ManualClock()
    server = make_server(clock)
    genuine = server.challenge()[0]
    nonce = parse_challenge(genuine).nonce
    tampered_nonce = ("A" if nonce[0] != "A" else "B") + nonce[1:]
    forged = genuine.replace(nonce, tampered_nonce)
    creds = answer(server, challenge_value=forged)
    assert server.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.WRONG


def test_wrong_password_is_wrong() -> None:
    server = make_server(ManualClock())
    creds = answer(server, password="guess")
    assert server.verify(creds, "REGISTER", ha1_for(creds, "secret")) is VerifyOutcome.WRONG


def test_non_ascii_response_is_wrong_not_a_crash() -> None:
    server = make_server(ManualClock())
    creds = answer(server)
    garbled = DigestCredentials(**{**_fields(creds), "response": "é" * 64})
    assert server.verify(garbled, "REGISTER", ha1_for(creds)) is VerifyOutcome.WRONG


def test_wrong_method_is_wrong() -> None:
    server = make_server(ManualClock())
    creds = answer(server, method="INVITE")
    assert server.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.WRONG


def test_wrong_realm_is_wrong_even_with_matching_digest() -> None:
    clock = ManualClock()
    server = make_server(clock)
    challenge_value = server.challenge()[0].replace(f'realm="{REALM}"', 'realm="elsewhere"')
    creds = answer(server, challenge_value=challenge_value)
    assert creds.realm == "elsewhere"
    ha1 = compute_ha1("alice", "elsewhere", "secret", creds.algorithm)
    assert server.verify(creds, "REGISTER", ha1) is VerifyOutcome.WRONG


def test_expired_nonce_with_correct_digest_is_stale_then_fresh_challenge_works() -> None:
    clock = ManualClock()
    server = make_server(clock, nonce_lifetime=300.0)
    creds = answer(server)
    clock.now += 301
    assert server.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.STALE
    retry = answer(server, challenge_value=server.challenge(stale=True)[0])
    assert server.verify(retry, "REGISTER", ha1_for(retry)) is VerifyOutcome.OK


def test_expired_nonce_with_wrong_digest_is_wrong_not_stale() -> None:
    clock = ManualClock()
    server = make_server(clock)
    creds = answer(server, password="guess")
    clock.now += 301
    assert server.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.WRONG


def test_nonce_within_lifetime_is_ok() -> None:
    clock = ManualClock()
    server = make_server(clock)
    creds = answer(server)
    clock.now += 299
    assert server.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.OK


def test_replayed_nonce_count_is_wrong_and_increasing_counts_are_ok() -> None:
    server = make_server(ManualClock())
    challenge_value = server.challenge()[0]
    first = answer(server, challenge_value=challenge_value, nc=1)
    assert server.verify(first, "REGISTER", ha1_for(first)) is VerifyOutcome.OK
    assert server.verify(first, "REGISTER", ha1_for(first)) is VerifyOutcome.WRONG
    third = answer(server, challenge_value=challenge_value, nc=3)
    assert server.verify(third, "REGISTER", ha1_for(third)) is VerifyOutcome.OK
    second = answer(server, challenge_value=challenge_value, nc=2)
    assert server.verify(second, "REGISTER", ha1_for(second)) is VerifyOutcome.WRONG


def test_forged_high_nonce_count_does_not_lock_out_the_real_client() -> None:
    server = make_server(ManualClock())
    challenge_value = server.challenge()[0]
    forged = answer(server, challenge_value=challenge_value, nc=0xFFFF, password="guess")
    assert server.verify(forged, "REGISTER", ha1_for(forged)) is VerifyOutcome.WRONG
    real = answer(server, challenge_value=challenge_value, nc=1)
    assert server.verify(real, "REGISTER", ha1_for(real)) is VerifyOutcome.OK


def test_replay_memory_is_bounded_by_window() -> None:
    server = make_server(ManualClock(), replay_window=2)
    answered = [answer(server) for _ in range(3)]
    for creds in answered:
        assert server.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.OK
    # The oldest nonce fell out of the window; the two newest are still remembered.
    assert server.verify(answered[0], "REGISTER", ha1_for(answered[0])) is VerifyOutcome.OK
    assert server.verify(answered[2], "REGISTER", ha1_for(answered[2])) is VerifyOutcome.WRONG


def test_request_without_qop_is_accepted_once_per_nonce() -> None:
    server = make_server(ManualClock())
    challenge_value = server.challenge()[0].replace(', qop="auth"', "")
    creds = answer(server, challenge_value=challenge_value)
    assert creds.qop is None
    assert server.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.OK
    assert server.verify(creds, "REGISTER", ha1_for(creds)) is VerifyOutcome.WRONG


def test_wrong_opaque_and_unoffered_algorithm_are_wrong() -> None:
    server = make_server(ManualClock(), algorithms=("SHA-256",))
    creds = answer(server)
    other_opaque = DigestCredentials(**{**_fields(creds), "opaque": "not-ours"})
    assert server.verify(other_opaque, "REGISTER", ha1_for(creds)) is VerifyOutcome.WRONG
    md5_value = server.challenge()[0].replace("algorithm=SHA-256", "algorithm=MD5")
    md5_creds = answer(server, challenge_value=md5_value)
    assert server.verify(md5_creds, "REGISTER", ha1_for(md5_creds)) is VerifyOutcome.WRONG


def _fields(creds: DigestCredentials) -> dict[str, Any]:
    return creds.as_dict()


def test_parse_challenge_fields() -> None:
    challenge = parse_challenge(
        'Digest realm="asterisk", nonce="1a2b", algorithm=md5, qop="auth,auth-int",'
        ' stale=TRUE, domain="sip:asterisk"'
    )
    assert challenge == DigestChallenge(
        realm="asterisk",
        nonce="1a2b",
        algorithm="MD5",
        qop_options=("auth", "auth-int"),
        opaque=None,
        stale=True,
    )


def test_select_challenge_skips_unusable_and_rejects_when_none_left() -> None:
    chosen = select_challenge(
        [
            "Basic realm=x",
            'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"',
            'Digest realm="r", nonce="n2", algorithm=MD5, qop="auth"',
        ]
    )
    assert chosen.nonce == "n2"
    with pytest.raises(SipError) as raised:
        select_challenge(['Digest realm="r", nonce="n", qop="auth-int"', "Basic realm=x"])
    assert raised.value.status == 400


def test_build_authorization_needs_exactly_one_secret() -> None:
    challenge = rfc_challenge("MD5")
    with pytest.raises(ValueError, match="exactly one"):
        build_authorization(challenge, method="GET", uri="/", username="u")
    with pytest.raises(ValueError, match="exactly one"):
        build_authorization(challenge, method="GET", uri="/", username="u", password="p", ha1="h")
