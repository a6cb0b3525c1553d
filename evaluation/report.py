"""The results table: one row per system and setting, as markdown and JSON.

Every row carries the settings it was produced with; the table carries the
checkpoint's identity (path and SHA-256), the protocol and the extractors, so a
number can always be traced back. The first metric column, ``drawn``, is the share of
items the system produced an image for: under free drawing the image metrics beside
it are over those items only. Systems not rerun here (GILL, Divter, the paper's own
figures) come from a config of published figures and are marked "quoted"; a score a
quoted row has no figure for reads "not retrieved" (or the entry's own ``missing``
text), never a blank that could pass for a measured value.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import yaml

# Column order of the markdown table; other keys follow alphabetically.
METRIC_ORDER = (
    "drawn", "fid", "clean_fid", "fid_per_story", "is", "clip_i", "clip_t",
    "bleu1", "bleu2", "rouge_l", "sbert", "clip_f1", "intent_f1",
    "text_correct", "image_precision", "image_recall", "image_f1", "colour_right", "shape_right",
    "colour_from_image", "coherence", "items",
)
# The scores (METRIC_ORDER less its count): where a quoted row has no figure, it says why.
SCORE_COLUMNS = frozenset(METRIC_ORDER) - {"items"}
NOT_RETRIEVED = "not retrieved"


def is_fraction(value: Any) -> bool:
    """A score given as ``{"value", "hits", "count"}`` (the synthetic world's fractions)."""
    return isinstance(value, dict) and {"value", "hits", "count"} <= set(value)


def metric_value(metric: Any) -> Any:
    """A fraction's value, or the metric itself when it is a plain number (or anything else)."""
    return metric["value"] if is_fraction(metric) else metric


def file_sha256(path: Union[str, Path]) -> str:
    """SHA-256 of a file, or of a directory's files (names and bytes, sorted) e.g. a sharded checkpoint."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def checkpoint_identity(path: Union[str, Path]) -> dict[str, str]:
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def quoted_rows(path: Union[str, Path], protocol: str) -> list[dict[str, Any]]:
    """The published rows for ``protocol`` from a quoted-figures YAML
    (``{protocol: [{system, source, metrics, missing?}]}``; ``missing`` says what the row's
    absent scores mean, by default "not retrieved")."""
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except FileNotFoundError as err:
        raise ValueError(f"quoted figures file '{path}' does not exist (pass --quoted '' to leave them out)") from err
    rows = []
    for entry in config.get(protocol) or []:
        lacking = {"system", "source", "metrics"} - set(entry)
        if lacking:
            raise ValueError(f"{path}: a {protocol} entry lacks {sorted(lacking)}: {entry}")
        metrics = dict(entry["metrics"] or {})
        bad = {k: v for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
        if bad:
            raise ValueError(f"{path}: {protocol} entry {entry['system']!r} has non-numeric figures {bad}; "
                             "leave a figure out rather than writing a placeholder")
        rows.append({"system": entry["system"], "kind": "quoted", "source": entry["source"], "metrics": metrics,
                     "missing": entry.get("missing", NOT_RETRIEVED)})
    return rows


def _row_cell(row: dict[str, Any], column: str) -> str:
    """A row's cell; a quoted row without a figure for a score says so instead of a blank."""
    value = row["metrics"].get(column)
    if value is None and row["kind"] == "quoted" and column in SCORE_COLUMNS:
        return row.get("missing", NOT_RETRIEVED)
    return _cell(value)


def _cell(value: Any) -> str:
    if is_fraction(value):
        return f"{_cell(value['value'])} ({value['hits']}/{value['count']})"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The metrics of ``rows`` that make table columns (no ``*_std``, no nested records), in table order."""
    keys = {k for row in rows for k, v in row["metrics"].items()
            if not k.endswith("_std") and (not isinstance(v, dict) or is_fraction(v))}
    return [k for k in METRIC_ORDER if k in keys] + sorted(keys - set(METRIC_ORDER))


def markdown_table(header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as markdown: what was run, then one table row per result row."""
    columns = metric_columns(rows)
    lines = [f"# {header['protocol']} evaluation", ""]
    for name, value in header.items():
        if name != "protocol":
            lines.append(f"- {name}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    lines += ["", "| system | kind | guidance | " + " | ".join(columns) + " |",
              "|" + "---|" * (3 + len(columns))]
    for row in rows:
        guidance = row.get("settings", {}).get("guidance_scale")
        kind = row["kind"] if row["kind"] != "quoted" else f"quoted ({row['source']})"
        cells = [row["system"], kind, _cell(guidance)] + [_row_cell(row, c) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: Union[str, Path], header: dict[str, Any], rows: list[dict[str, Any]], name: Optional[str] = None
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` (or ``<name>.json/.md``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = name or "results"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps({**header, "rows": rows}, indent=2) + "\n")
    md_path.write_text(markdown_table(header, rows))
    return json_path, md_path
