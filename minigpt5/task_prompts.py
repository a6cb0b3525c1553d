"""The official code's stage-2 prompt wording, as plain strings (one place for data, templates and evaluation).

Verbatim from the authors' ``dataloader.py`` (eric-ai-lab/MiniGPT-5, commit 915ab17), with
their template around it taken off: the official strings read
``"###Human:{prompt} <instruction> ###Assistant:"``, where ``{prompt}`` is the story so far;
the ``###Human:`` / ``###Assistant:`` markers, the ``<Img><ImageHere></Img>`` wrapping of
input images and the system prompt's place are the prompt template's business
(``minigpt4`` template), not the data's. Spelling and case are kept as published
("What happen in ...", "Please understanding images ...", the lower-case "the scene
description: ...").

Layout of the official VIST source (``dataloader.py:260-267``): the earlier steps'
captions each followed by one image, with nothing between an image and the next caption,
then ``"\\n"``, then a space and the instruction.
"""

from __future__ import annotations

# dataloader.py:34: the system prompt of the CC3M instruction rows.
CAPTION_SYSTEM = "You will be able to generate image according to command."
# dataloader.py:35-43: the requests of the CC3M instruction rows, one drawn per row.
CAPTION_INSTRUCTIONS = (
    "generate image with caption:",
    "can you give me the image with caption:",
    "help me to generate this image:",
    "generate image with according to caption:",
    "according to caption, generate image:",
    "an image with caption:",
    "can you visualize this caption:",
)
# dataloader.py:236-237 (VIST) and 318-319 (MMDialog): the system prompt, put before "###Human:".
VIST_SYSTEM = (
    "Give the following images in <Img>ImageContent</Img> format. "
    "You will be able to see the images once I provide it to you. Please understanding images and generate story."
)
MMDIALOG_SYSTEM = (
    "Give the following images in <Img>ImageContent</Img> format. "
    "You will be able to see the images once I provide it to you. "
    "Please generate conversations with appropriate images."
)

# dataloader.py:238-241: image generation from the step's description ({text}); target: the image alone.
VIST_GENERATE = (
    "Generate an image with the scene description: {text}",
    "the scene description: {text}",
)
# The evaluation items' prompt: the first wording, for every step, step 0 included (the
# official test items are this task alone, dataloader.py:266-280).
VIST_IMAGE_PROMPT = VIST_GENERATE[0]
# dataloader.py:242-246: text + image continuation; target: the step's caption, then its image.
VIST_CONTINUE = (
    "Tell me the next scene with image.",
    "Generate the next scene with image.",
    "What should happen then?",
)
# dataloader.py:247-250: story understanding; the step's image follows the words (one
# <Img><ImageHere></Img> after the colon); target: the step's caption.
VIST_UNDERSTAND = (
    "Tell me the next scene description by this image:",
    "What happen in the next scene image:",
)
