"""The browser front end of ``minigpt5 chat``: a Gradio page over :class:`lit_models.chat.ChatEngine`.

The page shows a conversation and holds each browser session's :class:`~lit_models.chat.Exchange`
list in a ``gr.State``; every reply is computed by the engine (one model for all sessions,
replies one at a time), and the page only shows it. Per reply the user picks whether an
image is drawn, the seed, guidance scale, diffusion steps and sampler. "Download as HTML"
gives the page :func:`lit_models.chat.chat_html` writes.
"""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; read when gradio is imported

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from lit_models.chat import PAGE_NAME, ChatEngine, Exchange, TurnOptions, save_chat_html  # noqa: E402
from lit_models.generate_cli import load_images  # noqa: E402
from minigpt5.config import SAMPLER_NAMES  # noqa: E402

# The tiny models draw 16-32 px pictures: shown large, pixels kept sharp.
CSS = ("#conversation img { min-width: 192px !important; min-height: 192px !important; object-fit: contain;"
       " image-rendering: pixelated; }")
DRAW_CHOICES = [("model decides", "auto"), ("draw an image", "draw"), ("no image", "none")]


def _image(image: Image.Image, label: str) -> gr.Image:
    return gr.Image(value=image, label=label, show_label=False, type="pil", format="png", height=256)


def _text(text: str) -> str:
    """Text shown as written: the Chatbot reads messages as HTML (``<s>`` would strike the rest through)."""
    return html.escape(text, quote=False)


def chat_messages(history: list[Exchange]) -> list[dict[str, Any]]:
    """The conversation as Chatbot messages: the user's text and images, then the reply's text
    and images in the order they were written."""
    messages: list[dict[str, Any]] = []
    for turn, exchange in enumerate(history, start=1):
        user: list[Any] = [_text(exchange.text)] if exchange.text.strip() else []
        user += [_image(im, f"attached image {i}") for i, im in enumerate(exchange.images, start=1)]
        messages.append({"role": "user", "content": user})
        reply: list[Any] = []
        numbers = iter(range(1, len(exchange.reply.images) + 1))
        for segment in exchange.reply.segments:
            is_text = isinstance(segment, str)
            reply.append(_text(segment) if is_text else _image(segment, f"turn {turn}, image {next(numbers)}"))
        messages.append({"role": "assistant", "content": reply or ["(no reply: the model ended the turn at once)"]})
    return messages


def build_app(engine: ChatEngine, pages_dir: Optional[Path] = None) -> gr.Blocks:
    """The chat page over ``engine``; "Download as HTML" files go to ``pages_dir`` (a new
    temporary folder when None), one per browser session, rewritten after each reply."""
    pages = Path(pages_dir or tempfile.mkdtemp(prefix="minigpt5-chat-"))
    defaults = engine.defaults

    def respond(history: list[Exchange], message: dict[str, Any], draw: str, seed: float, guidance: float,
                steps: float, sampler: str, request: gr.Request):
        options = TurnOptions(draw, int(seed), float(guidance), int(steps), sampler)
        try:
            images = load_images(list(message.get("files") or []))
            exchange = engine.reply(history, message.get("text") or "", images, options)
        except ValueError as err:
            raise gr.Error(str(err)) from err
        history = history + [exchange]
        page = save_chat_html(history, pages / request.session_hash / PAGE_NAME)
        return history, chat_messages(history), None, gr.DownloadButton(value=str(page), interactive=True)

    def restart():
        return [], [], gr.DownloadButton(value=None, interactive=False)

    with gr.Blocks(title="MiniGPT-5 chat", analytics_enabled=False) as app:
        history = gr.State([])
        gr.Markdown("## MiniGPT-5 chat\nWrite a message (attach images with the clip); the model answers "
                    "with text and pictures. The whole conversation, pictures included, is its context.")
        chatbot = gr.Chatbot(label="conversation", elem_id="conversation", height=520, render_markdown=False,
                             feedback_options=None, group_consecutive_messages=False)
        message = gr.MultimodalTextbox(elem_id="message", placeholder="Your message", file_types=["image"],
                                       file_count="multiple", show_label=False)
        with gr.Row():
            draw = gr.Radio(DRAW_CHOICES, value="auto", label="picture in the reply", elem_id="draw")
            seed = gr.Number(defaults.seed, precision=0, label="seed", elem_id="seed")
            guidance = gr.Slider(0.0, 15.0, defaults.guidance_scale, step=0.5, label="guidance scale")
            steps = gr.Slider(1, 100, defaults.num_inference_steps, step=1, label="diffusion steps")
            sampler = gr.Dropdown(list(SAMPLER_NAMES), value=defaults.sampler, label="sampler")
        with gr.Row():
            download = gr.DownloadButton("Download as HTML", interactive=False, elem_id="download")
            new = gr.Button("New conversation", elem_id="new")
        message.submit(respond, [history, message, draw, seed, guidance, steps, sampler],
                       [history, chatbot, message, download])
        new.click(restart, None, [history, chatbot, download])
    return app


def serve(app: gr.Blocks, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
          block: bool = True) -> str:
    """Serve ``app`` on ``host:port`` (no public link unless ``share``); return its local URL.
    ``block``: wait until the server ends (Ctrl+C); otherwise it runs in a thread until ``app.close()``."""
    app.launch(server_name=host, server_port=port, share=share, inbrowser=False, prevent_thread_lock=not block,
               quiet=not block, css=CSS)
    return app.local_url
