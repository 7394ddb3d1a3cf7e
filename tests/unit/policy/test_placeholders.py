import pytest

from veil.policy import SecretFormatError, substitute, substitute_text, value_renderer

SECRETS = {"a": b"\x00\xffhi", "t": b"text"}


def test_formats_render_the_secret_bytes() -> None:
    text = "$$VEIL::a:hex$$|$$VEIL::a:base64$$|$$VEIL::a:base64url$$|$$VEIL::t$$"
    assert substitute(text, value_renderer(SECRETS)) == b"00ff6869|AP9oaQ==|AP9oaQ|text"


def test_raw_binary_in_file_content_keeps_bytes() -> None:
    assert substitute("<$$VEIL::a:raw$$>", value_renderer(SECRETS)) == b"<\x00\xffhi>"


def test_text_places_refuse_nul_bytes() -> None:
    with pytest.raises(SecretFormatError, match="NUL"):
        substitute_text("$$VEIL::a$$", value_renderer(SECRETS), "env X")


def test_text_without_placeholders_is_unchanged() -> None:
    assert substitute_text("plain $$ text", value_renderer(SECRETS), "x") == "plain $$ text"
