"""`scratchllm eval perplexity|choice|compare` end to end on tiny checkpoints: the numbers equal the
library's, the card gets them, the report is written; a run's validation split is the one it held out."""

import json
import math

import pytest
from eval_helpers import byte_tokenizer, save_tiny

from scratchllm.cli import main
from scratchllm.evaluate.card import HEADING
from scratchllm.evaluate.multiple_choice import read_items, score_items
from scratchllm.evaluate.perplexity import perplexity
from scratchllm.interop.load import load_any

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. " * 6
ITEMS = [{"context": "abc", "choices": ["def", "xyz"], "label": 0},
         {"query": "Now is the winter of our", "choices": ["discontent", "banana"], "gold": 0},
         {"context": "12", "choices": ["3", "9", "x"], "answer": 2}]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS), encoding="utf-8")
    return {"a": save_tiny(tmp_path / "a"), "b": save_tiny(tmp_path / "b", seed=1),
            "bare": save_tiny(tmp_path / "bare", card=False), "text": tmp_path / "text.txt",
            "items": tmp_path / "items.jsonl"}


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_perplexity_equals_the_librarys_and_goes_on_the_card(files, capsys):
    got = run_json(capsys, ["eval", "perplexity", "-m", str(files["a"]), "--file", str(files["text"]), "--stride",
                            "5", "--json", "-q"])
    model, tok, _ = load_any(files["a"])
    want = perplexity(model, tok, TEXT, stride=5, progress=False)
    assert got["perplexity"] == pytest.approx(want.perplexity, rel=1e-6)
    assert got["bits_per_byte"] == pytest.approx(want.bits_per_byte, rel=1e-6)
    assert got["bytes"] == len(TEXT.encode()) and got["stride"] == 5
    card = (files["a"] / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.count(HEADING) == 1 and f"--file {files['text']} --stride 5" in card
    assert f"perplexity {want.perplexity:.4g}" in card


def test_text_argument_and_plain_output(files, capsys):
    assert main(["eval", "perplexity", "-m", str(files["bare"]), "hello there", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("perplexity ") and "bits per byte" in out
    assert not (files["bare"] / "MODEL_CARD.md").exists()  # no card, none made


def test_no_card_leaves_the_card_alone(files, capsys):
    before = (files["a"] / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert main(["eval", "perplexity", "-m", str(files["a"]), "hi there", "-q", "--no-card"]) == 0
    assert (files["a"] / "MODEL_CARD.md").read_text(encoding="utf-8") == before


def test_choice_equals_the_librarys(files, capsys):
    got = run_json(capsys, ["eval", "choice", "-m", str(files["a"]), str(files["items"]), "--json", "-q"])
    model, tok, _ = load_any(files["a"])
    want = score_items(model, tok, read_items(files["items"]), progress=False)
    assert got["items"] == 3 and got["acc"] == want.acc and got["acc_norm"] == want.acc_norm
    assert [s for row in got["scores"] for s in row] == pytest.approx([s for row in want.scores for s in row], rel=1e-6)
    assert "`scratchllm eval choice -m" in (files["a"] / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_compare_writes_markdown_json_and_a_chart(files, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["eval", "compare", str(files["a"]), str(files["b"]), "--file", str(files["text"]),
                 "--choices", str(files["items"]), "--out", str(out), "--title", "a vs b", "-q"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [r["model"] for r in report["models"]] == [str(files["a"]), str(files["b"])]
    for row, folder in zip(report["models"], (files["a"], files["b"])):
        model, tok, _ = load_any(folder)
        assert row["bits_per_byte"] == pytest.approx(perplexity(model, tok, TEXT, progress=False).bits_per_byte,
                                                     rel=1e-6)
        assert "acc_norm" in row
        assert "scratchllm eval compare" in (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# a vs b") and md.count(f"| {files['a']} |") == 1 and "report.png" in md
    best = min(report["models"], key=lambda r: r["bits_per_byte"])["bits_per_byte"]
    assert f"**{best:.4f}**" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_a_runs_validation_split_is_the_text_it_held_out(files, tmp_path, capsys):
    """--dataset NAME --split val on a run trained on NAME scores the documents of its val.bin."""
    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.data.shards import write_shards
    from scratchllm.evaluate.card import CARD_FILE

    docs = [f"document {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 3) for i in range(20)]
    tok = byte_tokenizer()
    data = write_shards(docs, tok, tmp_path / "prepared", val_fraction=0.2, split_by="document", progress=False)
    assert data["documents"]["val"] == 4
    model, _, _ = load_any(files["a"])
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "step-0000001", model, tokenizer=tok,
                    state={"step": 1, "data_dir": str(tmp_path / "prepared"),
                           "run_config": {"data": {"dataset": "corpus.txt"}}})
    (run / "latest").write_text("step-0000001\n")
    (run / CARD_FILE).write_text("# model card: run\n", encoding="utf-8")
    got = run_json(capsys, ["eval", "perplexity", "-m", str(run), "--dataset", "corpus.txt", "--split", "val",
                            "--json", "-q"])
    from scratchllm.data.shards import val_documents

    held_out = [d for d, v in zip(docs, val_documents(len(docs), 0.2, 0)) if v]
    want = perplexity(model, tok, held_out, progress=False)
    assert got["bytes"] == sum(len(d.encode()) for d in held_out)
    assert got["perplexity"] == pytest.approx(want.perplexity, rel=1e-6)
    assert "--dataset corpus.txt --split val" in (run / CARD_FILE).read_text(encoding="utf-8")
    # the prepared folder itself as --dataset: the same text, for any model
    again = run_json(capsys, ["eval", "perplexity", "-m", str(files["bare"]), "--dataset",
                              str(tmp_path / "prepared"), "--split", "val", "--json", "-q"])
    assert again["bytes"] == got["bytes"] and math.isclose(again["perplexity"], got["perplexity"], rel_tol=1e-6)
    # compare: the run's split is the text every model scores
    report = run_json(capsys, ["eval", "compare", str(files["bare"]), str(run), "--dataset", "corpus.txt", "--split",
                               "val", "--out", str(tmp_path / "cmp"), "--json", "-q"])
    assert [r["bytes"] for r in report["models"]] == [got["bytes"]] * 2
    assert report["models"][1]["perplexity"] == pytest.approx(got["perplexity"], rel=1e-6)


def test_a_card_that_cannot_be_written_is_a_warning_after_the_results(files, capsys, monkeypatch):
    import errno

    import scratchllm.evaluate.card as card

    def denied(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("scratchllm.files.write_atomic", denied)
    before = (files["a"] / card.CARD_FILE).read_text(encoding="utf-8")
    assert main(["eval", "perplexity", "-m", str(files["a"]), "hi there", "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("perplexity ")
    assert err.startswith("warning: the results were not added to the model card: ") and "permission denied" in err
    assert (files["a"] / card.CARD_FILE).read_text(encoding="utf-8") == before
