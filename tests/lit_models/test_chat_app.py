"""The chat page's view of a conversation (Gradio's Chatbot messages) and how ``minigpt5 chat``
serves it, without a browser."""

from __future__ import annotations

import types

import pytest
from PIL import Image

from lit_models.chat import Exchange


@pytest.fixture
def gr():
    """Gradio, imported when a test here runs (not when the suite is collected)."""
    return pytest.importorskip("gradio", reason="the chat page needs the chat extra: pip install -e '.[chat]'")


def exchange(text: str, images: list[Image.Image], segments: list) -> Exchange:
    reply = types.SimpleNamespace(segments=segments, images=[s for s in segments if isinstance(s, Image.Image)])
    return Exchange(text, images, reply)


def test_messages_keep_the_written_order_and_show_text_as_written(gr):
    from lit_models.chat_app import chat_messages

    red, blue, green = (Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green"))
    history = [exchange("look <b>here</b>", [red], [blue, "a <s> b & c", green]),
               exchange("", [red], [])]
    messages = chat_messages(history)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    user, reply = messages[0]["content"], messages[1]["content"]
    assert user[0] == "look &lt;b&gt;here&lt;/b&gt;"  # the Chatbot reads HTML: shown literally, not bold
    assert isinstance(user[1], gr.Image) and user[1].constructor_args["value"] is red
    assert [type(c) for c in reply] == [gr.Image, str, gr.Image]  # picture, text, picture: as written
    assert reply[1] == "a &lt;s&gt; b &amp; c"
    assert [reply[0].constructor_args["value"], reply[2].constructor_args["value"]] == [blue, green]
    assert reply[2].constructor_args["label"] == "turn 1, image 2"
    assert len(messages[2]["content"]) == 1  # an image alone, no empty text
    assert "ended the turn" in messages[3]["content"][0]
    shown = gr.Chatbot().postprocess(messages).root  # what the page receives
    assert [m.role for m in shown] == ["user", "assistant", "user", "assistant"]
    assert all(c.value["path"].endswith(".png") for c in shown[1].content if c.type == "component")


def test_minigpt5_chat_serves_on_this_machine_unless_shared(gr, monkeypatch):
    from lit_models import chat_app, chat_cli

    served = []
    monkeypatch.setattr(chat_app, "serve", lambda app, host, port, share: served.append((app, host, port, share)))
    assert chat_cli.main(["--tiny", "--port", "7999", "--max-new-tokens", "5"]) == 0
    app, host, port, share = served[0]
    assert isinstance(app, gr.Blocks) and (host, port, share) == ("127.0.0.1", 7999, False)
    assert chat_cli.main(["--tiny", "--share"]) == 0 and served[1][3] is True
