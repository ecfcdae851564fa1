"""The console's words: every language has every key, each with the same placeholders, and
the language of a request is chosen as docs/dashboard.md says."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tepi.gateway.dashtext import LANGS, NAMES, STRINGS, lang, negotiate, reset, t, use

pytestmark = pytest.mark.timeout(60)


def fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}


@pytest.mark.parametrize("code", [c for c in LANGS if c != "en"])
def test_every_language_has_every_key_with_the_same_placeholders(code: str) -> None:
    en, other = STRINGS["en"], STRINGS[code]
    assert set(other) == set(en), set(en) ^ set(other)
    for key, text in en.items():
        assert fields(other[key]) == fields(text), key
        assert other[key].strip(), key
    assert set(NAMES) == set(LANGS) == set(STRINGS)


def test_t_speaks_the_language_in_use_and_reset_goes_back() -> None:
    assert lang() == "en"
    token = use("vi")
    try:
        assert lang() == "vi"
        assert t("cfg.applied", version="v1", seconds=2) == (
            "Đã áp dụng và xác nhận: v1, trong 2 giây."
        )
        for key, text in STRINGS["en"].items():  # each fills in
            t(key, **dict.fromkeys(fields(text), "x"))
    finally:
        reset(token)
    assert lang() == "en"
    token = use("xx")  # not one of ours: English
    try:
        assert t("nav.devices") == "Devices"
    finally:
        reset(token)


@pytest.mark.parametrize(
    ("chosen", "configured", "accept", "want"),
    [
        (None, "auto", "vi-VN,vi;q=0.9,en-US;q=0.8", "vi"),
        (None, "auto", "en-US,en;q=0.9,vi;q=0.8", "en"),
        (None, "auto", "fr-FR, vi;q=0.5, en;q=0.4", "vi"),
        (None, "auto", "fr, de", "en"),
        (None, "auto", None, "en"),
        (None, "auto", "vi;q=0.2, en;q=0.9", "en"),
        (None, "vi", "en", "vi"),  # dashboard.language wins over the browser
        ("en", "vi", "vi", "en"),  # the user's choice over both
        ("xx", "auto", "vi", "vi"),  # a cookie that is no language: ignored
        (None, "auto", "vi;q=abc, en", "en"),
    ],
)
def test_the_language_of_a_request(
    chosen: str | None, configured: str, accept: str | None, want: str
) -> None:
    assert negotiate(chosen, configured, accept) == want


@given(st.text(max_size=300), st.sampled_from(["auto", "en", "vi"]))
def test_any_accept_language_header_gives_one_of_ours(accept: str, configured: str) -> None:
    assert negotiate(None, configured, accept) in LANGS
