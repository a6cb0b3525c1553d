"""Image preprocessing shared by training, data conversion and sampling."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image


def pad_to_white_square(image: Image.Image) -> Image.Image:
    """Centre the RGB image on a white square whose side is its longer edge."""
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    if w == h:
        return image
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


# Names the transform below; latent caches record it, so a change to it must change this.
TARGET_TRANSFORM = "white-pad-square, bicubic resize, [-1, 1]"


def to_target_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """White-pad, resize to ``resolution`` and scale to [-1, 1] -> (3, H, W) float32."""
    square = pad_to_white_square(image).resize((resolution, resolution), Image.BICUBIC)
    array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def flip_where(images: torch.Tensor, flips: Optional[torch.Tensor]) -> torch.Tensor:
    """Images (N, C, H, W) with the rows where ``flips`` (N,) is True mirrored left to right."""
    if flips is None:
        return images
    return torch.where(flips[:, None, None, None], images.flip(-1), images)


def to_pil_images(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> list of PIL images."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in array]
