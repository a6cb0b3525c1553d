"""The instruction texts of the official code's tasks, kept in one place for training data and evaluation.

Each is a format string with ``{text}`` for the turn's own text.
"""

from __future__ import annotations

# VIST image generation from a step's description: the first of the two wordings the
# official loader draws from (dataloader.py:239; the other, line 240, drops "Generate an
# image with"). Its test items are this task for every step, step 0 included (lines 266-278).
VIST_IMAGE_PROMPT = "Generate an image with the scene description: {text}"
