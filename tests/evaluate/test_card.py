"""The model card's Evaluations section: appended, kept through a rewrite, and a checkpoint whose
manifest lists its card still loads."""

from eval_helpers import save_tiny

from scratchllm.evaluate.card import (
    CARD_FILE,
    HEADING,
    append_evaluation,
    find_card,
    format_entry,
    keep_evaluations,
    with_entry,
)

ENTRY = {"date": "2026-01-02 03:04 UTC", "command": "scratchllm eval perplexity -m runs/x --file t.txt",
         "results": {"perplexity": 12.3456789, "tokens": 12345}}


def test_the_card_file_is_trainings():
    from scratchllm.interop.importer import CARD_FILE as imported
    from scratchllm.train.logging import CARD_FILE as trained

    assert CARD_FILE == trained == imported


def test_an_entry_is_one_line_with_date_command_and_numbers():
    assert format_entry(ENTRY) == ("- 2026-01-02 03:04 UTC · `scratchllm eval perplexity -m runs/x --file t.txt` · "
                                   "perplexity 12.35, tokens 12,345")


def test_entries_go_into_one_section_newest_last():
    card = "# model card: x\n\n## Data\n\n- a\n"
    once = with_entry(card, "- first")
    assert once.startswith(card.rstrip("\n")) and once.count(HEADING) == 1 and once.endswith("- first\n")
    twice = with_entry(once + "\n## Later\n\ntext\n", "- second")
    assert twice.count(HEADING) == 1
    section = twice[twice.index(HEADING): twice.index("## Later")]
    assert section.index("- first") < section.index("- second")
    assert twice.endswith("## Later\n\ntext\n")


def test_a_rewritten_card_keeps_the_section():
    old = with_entry("# card\n\nold text\n", "- an evaluation")
    new = keep_evaluations(old, "# card\n\nnew text\n")
    assert "new text" in new and "old text" not in new and "- an evaluation" in new
    assert keep_evaluations("# card\n", "# new\n") == "# new\n"


def test_write_model_card_keeps_the_evaluations(tmp_path):
    from scratchllm.train.logging import write_model_card

    p = write_model_card(tmp_path, {"name": "x"})
    p.write_text(with_entry(p.read_text(encoding="utf-8"), "- measured"), encoding="utf-8")
    write_model_card(tmp_path, {"name": "x", "steps": 5})
    text = p.read_text(encoding="utf-8")
    assert "- steps: 5" in text and "- measured" in text and text.count(HEADING) == 1


def test_a_checkpoint_in_a_run_uses_the_runs_card(tmp_path):
    run = tmp_path / "run"
    ck = save_tiny(run / "checkpoints" / "step-0000001", card=False)
    assert find_card(ck) is None
    (run / CARD_FILE).write_text("# model card: run\n", encoding="utf-8")
    assert find_card(ck) == run / CARD_FILE
    assert append_evaluation(ck, ENTRY) == run / CARD_FILE
    assert "perplexity 12.35" in (run / CARD_FILE).read_text(encoding="utf-8")
    assert append_evaluation(tmp_path, ENTRY) is None  # no card: nothing written
    assert not (tmp_path / CARD_FILE).exists()


def test_a_card_in_the_manifest_is_updated_there_too(tmp_path):
    """An imported checkpoint lists MODEL_CARD.md in state.json: after the append it still verifies and loads."""
    from scratchllm.checkpoint.folder import read_state, verify_checkpoint
    from scratchllm.interop.importer import import_model
    from scratchllm.interop.load import load_any

    out = import_model(save_tiny(tmp_path / "src", card=False), tmp_path / "imported")
    assert CARD_FILE in read_state(out)["files"]
    append_evaluation(out, ENTRY)
    assert "perplexity 12.35" in (out / CARD_FILE).read_text(encoding="utf-8")
    verify_checkpoint(out)  # the new sha256 is in the manifest
    assert CARD_FILE in read_state(out)["files"]
    load_any(out)
