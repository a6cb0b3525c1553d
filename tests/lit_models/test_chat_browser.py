"""The chat as a person uses it: headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium) opens the app served on this machine by a tiny random model, picks "draw
an image", types a message and sends it, waits for the reply, and finds the reply's text and
the generated picture on the page, both as the engine computes them for that message. Then a
follow-up with an attached picture (answered after the first exchange), "Download as HTML"
(the page chat_html writes) and "New conversation". A screenshot of the first reply is saved
(path printed; ``-s`` shows it).

Skipped, saying what to install, without Chromium and its driver or without the chat extra;
``MINIGPT5_REQUIRE_BROWSER=1`` (``.ci/run`` sets it) makes that a failure instead.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import socket
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest
import torch
from PIL import Image

from lit_models.chat import PAGE_NAME, ChatEngine, chat_html
from minigpt5.config import MiniGPT5Config, VisionConfig
from minigpt5.decoding import resolve_decoding
from minigpt5.model import MiniGPT5

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "outputs" / "chat_test" / "screenshot.png"
WAIT = 45  # seconds the page may take for any one step (the reply itself takes well under one)
PROMPT = "draw me a red circle"
FOLLOW_UP = "now make it blue like this"


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail with it where the browser test must run (``.ci/run``)."""
    if os.environ.get("MINIGPT5_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readable(text: str) -> str:
    """``text`` as a page shows it: control characters dropped, runs of whitespace as one space."""
    return " ".join("".join(c for c in text if c.isprintable() or c.isspace()).split())


@pytest.fixture(autouse=True)
def no_proxy_here(monkeypatch) -> None:
    """Requests to 127.0.0.1 (Gradio's start-up check, chromedriver, the picture's URL) bypass any proxy."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))


@pytest.fixture
def browser(tmp_path) -> Iterator["object"]:
    """Headless Chromium whose downloads go to ``tmp_path / "downloads"``."""
    if not (CHROMIUM and CHROMEDRIVER):
        unavailable("the browser test needs Chromium and its driver: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
    except ImportError:
        unavailable("the browser test needs selenium: pip install -e '.[test]'")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        driver.execute_cdp_cmd("Page.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(tmp_path / "downloads")})
        yield driver
    finally:
        driver.quit()  # ends Chromium and chromedriver


@pytest.fixture
def chat(tmp_path) -> Iterator[tuple[ChatEngine, str]]:
    """The app on a free port of 127.0.0.1, in a thread of this process; closed after the test."""
    try:
        from lit_models.chat_app import build_app, serve
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        unavailable("the browser test needs the chat extra: pip install -e '.[chat]'")
    torch.manual_seed(0)
    model = MiniGPT5(MiniGPT5Config(vision=VisionConfig(kind="clip")))
    engine = ChatEngine(model, resolve_decoding("official", max_new_tokens=12, num_inference_steps=2))
    app = build_app(engine, tmp_path / "pages")
    try:
        yield engine, serve(app, "127.0.0.1", free_port(), block=False)
    finally:
        app.close()


def reply_on_page(driver, first: int = 0) -> Optional[tuple[list[str], list["object"]]]:
    """The text bubbles and loaded pictures of the model's messages from bubble ``first`` on
    (each text or picture is a bubble), once there are both (else None)."""
    from selenium.webdriver.common.by import By

    bubbles = driver.find_elements(By.CSS_SELECTOR, "#conversation [data-testid=bot]")[first:]
    pictures = [im for b in bubbles for im in b.find_elements(By.TAG_NAME, "img")
                if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", im)]
    texts = [b.text for b in bubbles if not b.find_elements(By.TAG_NAME, "img") and b.text.strip()]
    return (texts, pictures) if texts and pictures else None


def send(driver, wait, message: str, attachment: Optional[Path] = None) -> None:
    """Attach ``attachment`` (the message box's file input, as the clip button opens), type
    ``message`` and press Enter, as a person does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#message textarea")))
    if attachment is not None:
        driver.find_element(By.CSS_SELECTOR, "#message input[type=file]").send_keys(str(attachment))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#message img"))  # uploaded: its thumbnail shows
    box.send_keys(message)
    box.send_keys(Keys.ENTER)


def test_a_person_asks_for_pictures_and_sees_the_replies(browser, chat, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    engine, url = chat
    downloads = tmp_path / "downloads"
    wait = WebDriverWait(browser, WAIT)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.get(url)
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#message textarea")))
    browser.find_element(By.XPATH, "//*[@id='draw']//label[contains(., 'draw an image')]").click()
    send(browser, wait, PROMPT)
    try:
        texts, pictures = wait.until(reply_on_page)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#download").is_enabled())
    finally:
        browser.save_screenshot(str(SCREENSHOT))
        print(f"screenshot: {SCREENSHOT}")

    # What the engine writes for this message under the page's default settings and "draw an image".
    options = dataclasses.replace(engine.defaults, draw="draw")
    first = engine.reply([], PROMPT, options=options)
    assert first.reply.images and first.reply.text
    assert PROMPT in browser.find_element(By.CSS_SELECTOR, "#conversation [data-testid=user]").text
    assert readable(" ".join(texts)) == readable(first.reply.text)
    assert len(pictures) == len(first.reply.images)
    source = pictures[0].get_attribute("src")
    assert source.startswith(url.rstrip("/"))  # served by the app itself
    with urllib.request.urlopen(source, timeout=WAIT) as response:
        shown = Image.open(io.BytesIO(response.read())).convert("RGB")
    assert shown.tobytes() == first.reply.images[0].tobytes()  # the generated picture, pixel for pixel

    # The next message is answered after the first exchange, its picture included.
    # The next message, with a picture attached, is answered after the first exchange.
    attached = tmp_path / "square.png"
    Image.new("RGB", (24, 24), (30, 60, 220)).save(attached)
    send(browser, wait, FOLLOW_UP, attached)
    texts, _ = wait.until(lambda d: reply_on_page(d, first=len(first.reply.segments)))
    assert browser.find_elements(By.CSS_SELECTOR, "#conversation [data-testid=user] img")  # the attachment shows
    second = engine.reply([first], FOLLOW_UP, [Image.open(attached).convert("RGB")], options)
    assert readable(" ".join(texts)) == readable(second.reply.text)
    prompt = second.reply.sequence_ids[: second.reply.prompt_length]
    # Read as context: the first reply's picture and the attachment.
    assert prompt.count(engine.model.image_token_id) == 2 * engine.model.vision.num_tokens

    # "Download as HTML" saves the page chat_html writes for this conversation.
    browser.find_element(By.CSS_SELECTOR, "#download").click()
    saved = downloads / PAGE_NAME
    wait.until(lambda d: saved.is_file() and not list(downloads.glob("*.crdownload")))
    assert saved.read_text(encoding="utf-8") == chat_html([first, second])

    # "New conversation" empties the page (and the context).
    browser.find_element(By.CSS_SELECTOR, "#new").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#conversation [data-testid=bot]"))
    wait.until(lambda d: not d.find_element(By.CSS_SELECTOR, "#download").is_enabled())
