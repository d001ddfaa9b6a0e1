"""Slack text rendering: escaping, mentions, Markdown, limits (pure functions)."""

from __future__ import annotations

from handlers.slack import api_base_url
from handlers.slack_render import (
    SECTION_LIMIT,
    ZWSP,
    button_blocks,
    chunks,
    escape,
    md_to_mrkdwn,
    message_blocks,
    slack_to_plain,
    without_buttons,
)


def test_escape_neutralises_markup_and_broadcasts() -> None:
    assert (
        escape("a & b <c> <!channel> <@U1>") == "a &amp; b &lt;c&gt; &lt;!channel&gt; &lt;@U1&gt;"
    )
    for word in ("@channel", "@here", "@everyone", "@HERE"):
        out = escape(f"hi {word}!")
        assert word not in out and f"@{ZWSP}{word[1:]}" in out
    assert escape("mail me@here.com or @hereford") == "mail me@here.com or @hereford"


def test_slack_markup_becomes_plain_text() -> None:
    raw = (
        "<!here> <!channel|@channel> <@U12|ann> <@U34> <#C1|general> "
        "<https://x.test/a?b=1&amp;c=2|docs> <mailto:a@b.test> &lt;b&gt; &amp;amp;"
    )
    assert slack_to_plain(raw) == (
        "@here @channel @ann @U34 #general docs (https://x.test/a?b=1&c=2) "
        "mailto:a@b.test <b> &amp;"
    )
    assert slack_to_plain("<!subteam^S1|@oncall> <!date^1|Jan 1>") == "@oncall Jan 1"


def test_markdown_to_mrkdwn() -> None:
    md = (
        "# Reset your password\n"
        "Open **Settings** and *Security*, then click [Reset](https://ex.test/r?a=1&b=2).\n"
        "- step `a<b`\n"
        "* step two ~~old~~\n"
        "```\nif a < b: print('**x**')\n```\n"
        "[evil](javascript:alert(1)) <script> @channel"
    )
    out = md_to_mrkdwn(md)
    lines = out.splitlines()
    assert lines[0] == "*Reset your password*"
    assert "*Settings*" in out and "_Security_" in out
    assert "<https://ex.test/r?a=1&amp;b=2|Reset>" in out
    assert "• step `a&lt;b`" in out and "• step two ~old~" in out
    assert "if a &lt; b: print('**x**')" in out  # code stays code
    assert "<javascript" not in out and "&lt;script&gt;" in out
    assert f"@{ZWSP}channel" in out


def test_long_text_is_split_into_sections_without_breaking_entities() -> None:
    text = escape("<>&" * 2500)
    pieces = chunks(text)
    assert len(pieces) > 1 and all(len(p) <= SECTION_LIMIT for p in pieces)
    assert "".join(pieces) == text
    for p in pieces:
        assert not p.endswith("&") and not p.endswith("&l")
    _, blocks = message_blocks("line\n" * 2000, markdown=False)
    assert all(len(b["text"]["text"]) <= SECTION_LIMIT for b in blocks)


def test_buttons_and_pressed_messages() -> None:
    rows = [[{"label": "Yes" * 40, "data": "3|kb:yes"}, {"label": "No", "data": "3|kb:no"}]]
    blocks = button_blocks(rows)
    assert blocks[0]["type"] == "actions"
    yes, no = blocks[0]["elements"]
    assert yes["value"] == "3|kb:yes" and len(yes["text"]["text"]) <= 75
    assert yes["action_id"] != no["action_id"]
    _, msg = message_blocks("Did it help?", markdown=False, buttons=rows)
    pressed = without_buttons(msg, "No <b>")
    assert [b["type"] for b in pressed] == ["section", "context"]
    assert "No &lt;b&gt;" in pressed[-1]["elements"][0]["text"]


def test_api_base_url() -> None:
    assert api_base_url(None) == "https://slack.com/api/"
    assert api_base_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000/api/"
    assert api_base_url("http://127.0.0.1:9000/api") == "http://127.0.0.1:9000/api/"
    assert api_base_url("https://proxy.corp/slack/api/") == "https://proxy.corp/slack/api/"
