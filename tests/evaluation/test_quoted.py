"""Published figures (configs/eval/quoted.yaml) in the results table: known figures shown,
unknown ones marked "not retrieved", never a blank that could pass for a measurement."""

from __future__ import annotations

import argparse

import pytest
import yaml

from evaluation.report import markdown_table, quoted_rows
from lit_models.cli import main
from lit_models.eval_cli import QUOTED, build_parser


def table_cells(markdown: str) -> dict[str, dict[str, str]]:
    """{system (kind): {column: cell}} of a results table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[f"{cells[0]} ({cells[1].split(' ')[0]})"] = dict(zip(header, cells))
    return rows


def test_quoted_file_holds_the_retrieved_mmdialog_figures_and_nothing_guessed():
    config = yaml.safe_load(QUOTED.read_text())
    mmdialog = {e["system"]: e["metrics"] for e in config["mmdialog"]}
    assert mmdialog["Divter"] == {"intent_f1": 0.7177, "is": 20.53, "bleu1": 0.0944, "bleu2": 0.0745, "rouge_l": 0.1119}
    assert mmdialog["MiniGPT-5 (published)"] == {"is": 20.2, "bleu1": 0.291, "bleu2": 0.195, "rouge_l": 0.121}
    for protocol in ("cc3m", "vist"):  # the paper's own tables and GILL's figures were not retrieved
        assert {e["system"] for e in config[protocol]} == {"MiniGPT-5 (published)", "GILL"}
        assert all(e["metrics"] == {} for e in config[protocol])


def test_table_marks_unretrieved_figures_instead_of_blanks():
    measured = {"system": "MiniGPT-5", "kind": "run", "settings": {"guidance_scale": 7.5},
                "metrics": {"items": 6, "bleu1": 0.2, "bleu2": 0.1, "rouge_l": 0.15, "sbert": 0.4, "clip_f1": None,
                            "is": 3.0, "dialogues": 2}}
    rows = [measured, *quoted_rows(QUOTED, "mmdialog")]
    cells = table_cells(markdown_table({"protocol": "mmdialog"}, rows))
    divter, ours = cells["Divter (quoted)"], cells["MiniGPT-5 (run)"]
    assert (divter["bleu1"], divter["is"], divter["intent_f1"]) == ("0.0944", "20.53", "0.7177")
    assert divter["sbert"] == divter["clip_f1"] == "not retrieved"
    assert cells["MiniGPT-5 (published) (quoted)"]["intent_f1"] == "not retrieved"
    assert divter["items"] == divter["dialogues"] == "–"  # counts of our run, not scores
    assert ours["clip_f1"] == ours["intent_f1"] == "–"  # a measured row: not computed


def test_protocols_with_nothing_retrieved_say_so_in_every_score():
    measured = {"system": "MiniGPT-5", "kind": "run", "settings": {}, "metrics": {"fid": 30.0, "is": 5.0, "items": 6}}
    for protocol in ("cc3m", "vist"):
        cells = table_cells(markdown_table({"protocol": protocol}, [measured, *quoted_rows(QUOTED, protocol)]))
        for system in ("GILL (quoted)", "MiniGPT-5 (published) (quoted)"):
            assert cells[system]["fid"] == cells[system]["is"] == "not retrieved"


def test_quoted_entries_refuse_placeholders_and_missing_files(tmp_path):
    bad = tmp_path / "quoted.yaml"
    bad.write_text("mmdialog:\n  - {system: X, source: Y, metrics: {bleu1: '?'}}\n")
    with pytest.raises(ValueError, match=r"quoted\.yaml: mmdialog entry 'X' has non-numeric figures \{'bleu1': '\?'\}"):
        quoted_rows(bad, "mmdialog")
    with pytest.raises(ValueError, match=r"quoted figures file '.*nowhere\.yaml' does not exist"):
        quoted_rows(tmp_path / "nowhere.yaml", "mmdialog")


def test_eval_finds_the_quoted_file_from_any_directory_and_names_a_missing_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["--ckpt", "x.ckpt", "--protocol", "mmdialog", "--shards", "s.tar"])
    assert isinstance(args, argparse.Namespace) and args.quoted == str(QUOTED) and QUOTED.is_file()
    # A missing file stops the run before any model is loaded (x.ckpt does not exist either).
    assert main(["eval", "--ckpt", "x.ckpt", "--protocol", "mmdialog", "--shards", "s.tar", "--extractors", "tiny",
                 "--quoted", str(tmp_path / "gone.yaml")]) == 2
    assert "gone.yaml' does not exist" in capsys.readouterr().err
