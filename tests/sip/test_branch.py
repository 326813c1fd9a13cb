"""Signed Via branches: only the key holder makes one that verifies for its material."""

from __future__ import annotations

from sip.branch import MAGIC_COOKIE, is_rfc3261_branch, is_signed_branch, signed_branch

KEY = b"k" * 32


def test_a_signed_branch_verifies_for_its_key_and_material_only() -> None:
    branch = signed_branch(KEY, "call-1\nUDP\n10.0.0.1\n5060")
    assert is_rfc3261_branch(branch)
    assert is_signed_branch(branch, KEY, "call-1\nUDP\n10.0.0.1\n5060")
    assert is_signed_branch(branch + ".0123456789ab", KEY, "call-1\nUDP\n10.0.0.1\n5060")
    assert not is_signed_branch(branch, KEY, "call-1\nUDP\n10.0.0.2\n5060")
    assert not is_signed_branch(branch, b"other" * 8, "call-1\nUDP\n10.0.0.1\n5060")
    flipped = branch[:-1] + ("0" if branch[-1] != "0" else "1")
    assert not is_signed_branch(flipped, KEY, "call-1\nUDP\n10.0.0.1\n5060")


def test_malformed_branches_are_not_signed() -> None:
    for branch in (None, "", MAGIC_COOKIE, "z9hG4bKshort", "xyz" + "0" * 40,
                   MAGIC_COOKIE + "0" * 16 + "\u00e9" * 16):
        assert not is_signed_branch(branch, KEY, "m")
