"""Generation metrics (evaluate.text) equal sacrebleu and rouge-score called directly and values computed
by hand; responses files are read with the bad entry's file and line named; `scratchllm eval generation`
scores a responses file (its run's card gets the numbers) or a model's own responses."""

import json

import pytest
import sacrebleu
from eval_helpers import save_tiny
from rouge_score import rouge_scorer

from scratchllm.cli import main
from scratchllm.errors import UserError
from scratchllm.evaluate.card import HEADING
from scratchllm.evaluate.generation import read_entries, read_pairs
from scratchllm.evaluate.text import bleu, chrf, exact_match, rouge, text_metrics

PREDS = ["the cat sat on the mat", "Paris", "a quick brown fox jumps over the dog", " 42\n", "nothing in common"]
REFS = ["the cat was on the mat", "Paris", "the quick brown fox jumped over the lazy dog", "42", "at all"]


def test_bleu_and_chrf_equal_sacrebleu_called_directly():
    assert bleu(PREDS, REFS) == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert chrf(PREDS, REFS) == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert 0 < bleu(PREDS, REFS) < 100 and 0 < chrf(PREDS, REFS) < 100


def test_rouge_equals_rouge_score_and_the_hand_counts():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    direct = [scorer.score(r, p) for p, r in zip(PREDS, REFS)]
    got = rouge(PREDS, REFS)
    for t in ("rouge1", "rouge2", "rougeL"):
        assert got[t] == pytest.approx(sum(d[t].fmeasure for d in direct) / len(direct))
    # by hand: 5 of 6 words shared each way (the x2, cat, on, mat); 3 of 5 bigrams (the cat, on the, the mat)
    one = rouge(["the cat sat on the mat"], ["the cat was on the mat"])
    assert one == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})


def test_exact_match_and_the_summary():
    assert exact_match(PREDS, REFS) == pytest.approx(2 / 5)  # "Paris" and " 42\n" (whitespace stripped)
    m = text_metrics(PREDS, REFS)
    assert m["n"] == 5 and m["exact_match"] == pytest.approx(0.4)
    assert m["bleu"] == pytest.approx(bleu(PREDS, REFS)) and m["rougeL"] == pytest.approx(rouge(PREDS, REFS)["rougeL"])
    assert m["signatures"]["bleu"].startswith("nrefs:1|") and "tok:13a" in m["signatures"]["bleu"]
    assert text_metrics([], [])["bleu"] == 0.0
    with pytest.raises(UserError, match="2 predictions for 1 references"):
        text_metrics(["a", "b"], ["a"])


def write_list(path, entries):
    path.write_text(json.dumps(entries, indent=4), encoding="utf-8")
    return path


def test_entries_are_named_by_file_and_line(tmp_path):
    entries = [{"instruction": "x", "output": "a", "model_response": "a"},
               {"instruction": "y", "output": "b", "model_response": "c"}]
    p = write_list(tmp_path / "r.json", entries)
    got = read_entries(p)
    assert [e.fields for e in got] == entries
    lines = p.read_text().splitlines()
    assert [e.where for e in got] == [f"{p} line {lines.index('    {') + 1}",
                                      f"{p} line {len(lines) - lines[::-1].index('    {')}"]
    jl = tmp_path / "r.jsonl"
    jl.write_text(json.dumps(entries[0]) + "\n\n" + json.dumps({"output": "b", "answer": "c"}) + "\n")
    with pytest.raises(UserError, match=rf"{jl} line 3 has no 'model_response' field .*'answer'.*--response-field"):
        read_pairs(jl)
    bad = [({"output": 1, "model_response": "x"}, "line 1: 'output' is a JSON int, expected text"),
           ("text", "line 1 is a JSON str, expected an object"),
           ([1, 2], "line 1 is a JSON int, expected an object")]
    for value, message in bad:
        q = tmp_path / "bad.jsonl"
        q.write_text(json.dumps(value) + "\n")
        with pytest.raises(UserError, match=message):
            read_pairs(q)
    for text, message in (("", "is empty"), ("[]", "has no entries"), ("{\"a\": }\n", "line 1 is not valid JSON"),
                          ("[{\"a\": 1},]", "is not valid JSON"), ("{\"a\": 1}", "line 1 has no 'model_response'")):
        q = tmp_path / "bad.json"
        q.write_text(text)
        with pytest.raises(UserError, match=message):
            read_pairs(q)


def test_field_options_choose_the_fields(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text("".join(json.dumps({"target": r, "prediction": q}) + "\n" for q, r in zip(PREDS, REFS)))
    _, responses, references = read_pairs(p, response_field="prediction", reference_field="target")
    assert responses == PREDS and references == REFS


def test_cli_scores_a_runs_responses_and_appends_to_its_card(tmp_path, capsys):
    run = save_tiny(tmp_path / "run")
    p = write_list(run / "test-responses.json",
                   [{"instruction": "i", "input": "", "output": r, "model_response": q} for q, r in zip(PREDS, REFS)])
    assert main(["eval", "generation", str(p), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = text_metrics(PREDS, REFS)
    for k in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"):
        assert got[k] == pytest.approx(want[k])
    card = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.count(HEADING) == 1 and f"scratchllm eval generation {p}" in card
    assert f"bleu {want['bleu']:.4g}" in card and "exact_match 0.4" in card and "pairs 5" in card
    assert main(["eval", "generation", str(run), "--no-card"]) == 0  # a run folder: its test-responses.json
    assert capsys.readouterr().out.startswith(f"BLEU {want['bleu']:.2f}  chrF {want['chrf']:.2f}  ROUGE-1")
    assert main(["eval", "generation", str(tmp_path)]) == 2
    assert "is a folder without test-responses.json" in capsys.readouterr().err


def test_cli_generates_then_scores_with_a_model(tmp_path, capsys):
    from scratchllm.finetune.instruct import respond
    from scratchllm.interop.load import load_any

    model_dir = save_tiny(tmp_path / "m", context=64)
    entries = [{"prompt": "abc", "reference": "def"}, {"prompt": "Now is the", "reference": "winter"}]
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in entries))
    out = tmp_path / "answers.json"
    assert main(["eval", "generation", str(p), "-m", str(model_dir), "--reference-field", "reference",
                 "--max-new-tokens", "5", "--out", str(out), "--json", "-q"]) == 0
    got = json.loads(capsys.readouterr().out)
    model, tok, _ = load_any(model_dir)
    want = respond(model, tok, ["abc", "Now is the"], 5, "alpaca", tok.eot_id, 8)
    written = json.loads(out.read_text())
    assert [w["model_response"] for w in written] == want and written[0]["prompt"] == "abc"
    assert got["bleu"] == pytest.approx(bleu(want, ["def", "winter"]))
    assert got["exact_match"] == exact_match(want, ["def", "winter"])
    assert "scratchllm eval generation" in (model_dir / "MODEL_CARD.md").read_text()
    # an instruction entry is prompted in the book's Alpaca format (the model's template: none given, alpaca)
    from scratchllm.generate.templates import ALPACA_RESPONSE, alpaca_prompt

    p.write_text(json.dumps({"instruction": "Name a colour.", "input": "warm", "output": "red"}) + "\n")
    assert main(["eval", "generation", str(p), "-m", str(model_dir), "--max-new-tokens", "4", "--out", str(out),
                 "-q", "--no-card"]) == 0
    assert "warning: a prompt of 171 tokens is longer than the model's context of 64" in capsys.readouterr().err
    want = respond(model, tok, [alpaca_prompt("Name a colour.", "warm") + ALPACA_RESPONSE], 4, "alpaca", tok.eot_id)
    assert [w["model_response"] for w in json.loads(out.read_text())] == want


def test_cli_bad_files_are_one_error(tmp_path, capsys):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"output": "a", "model_response": "a"}) + "\n" + json.dumps({"output": "b"}) + "\n")
    assert main(["eval", "generation", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {p} line 2 has no 'model_response' field") and err.count("\n") == 1
    assert main(["eval", "generation", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question": "abc", "output": "x"}) + "\n")
    assert main(["eval", "generation", str(q), "-m", str(tmp_path / "nomodel")]) == 2
    assert "does not exist" in capsys.readouterr().err
