"""Forbidden strings -> token sequences, with the served model's own tokenizer (no engine needed)."""

from __future__ import annotations

from guard_service.policy import tokenization


def test_every_spelling_of_a_name_is_covered(tokenizer) -> None:
    sequences = tokenization.sequences_for(tokenizer, ["Rowling"])["Rowling"]
    assert {tokenizer.decode(list(s)) for s in sequences} == {"Rowling", " Rowling"}
    canonical = {tuple(tokenizer.encode(f, add_special_tokens=False)) for f in ("Rowling", " Rowling")}
    assert canonical < sequences and len(sequences) >= 4  # other segmentations too ("Row" "l" "ing")


def test_a_lengthened_final_piece_still_spells_the_name(tokenizer) -> None:
    """Observed on the TOFU fixture: with "Hina Ame|en" banned, the model wrote "Hina Ameens"."""
    canonical = tuple(tokenizer.encode(" Hina Ameen", add_special_tokens=False))
    extended = tokenization.extended(tokenizer, canonical)
    texts = {tokenizer.decode(list(s)) for s in extended}
    assert " Hina Ameens" in texts
    assert all(t.startswith(" Hina Ameen") and len(t) <= len(" Hina Ameen") + 3 for t in texts)
