"""Fixtures of the data modules' tests."""

from __future__ import annotations

import pytest

from data_modules.convert.vist import convert_vist


@pytest.fixture
def vist_shards(samples_dir, tmp_path):
    """Shards of the real VIST sample (``../shared/samples/VIST``), one story per sample."""
    vist = samples_dir / "VIST"
    return convert_vist(vist / "val_cleaned.json", vist / "val_image_mapping.json", tmp_path / "vist").spec
