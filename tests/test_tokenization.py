"""Forbidden strings -> token sequences, with the served model's own tokenizer (no engine needed)."""

from __future__ import annotations

from guard_service.guards.trie import TokenTrie, TrieMatcher
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


def _spelling_walk(tokenizer, text: str, names: list[str]) -> TrieMatcher:
    sequences = {s for seqs in tokenization.sequences_for(tokenizer, names).values() for s in seqs}
    matcher = TrieMatcher(TokenTrie(sequences, tokenization.token_classes(tokenizer)))
    matcher.seed(tokenizer.encode(text, add_special_tokens=False))
    return matcher


def test_once_a_name_is_begun_every_way_on_is_known(tokenizer) -> None:
    """The decode-side rule against truncated spellings: after the first characters of a forbidden word, the
    matcher names every token that goes on with it and says the word is open (so word-continuing pieces are
    banned too); a separator does not reset it; an unrelated word leaves nothing."""
    cont = tokenization.token_classes(tokenizer).continues_word
    ways_on, open_word = _spelling_walk(tokenizer, "She met Herm", ["Hermione"]).committed(3)
    assert open_word and ways_on, ways_on
    assert {tokenizer.decode([t]) for t in ways_on} & {"ione", "i", "io", "ion"}
    assert _spelling_walk(tokenizer, "She met Herm-", ["Hermione"]).committed(3)[1]  # "Herm-ione" stays shut
    ways_on, _ = _spelling_walk(tokenizer, "written by J.K.", ["J.K. Rowling"]).committed(3)
    assert any(tokenizer.decode([t]).strip().startswith("R") for t in ways_on)  # " Row", " R", ...
    assert _spelling_walk(tokenizer, "a row of houses", ["Hermione", "J.K. Rowling"]).committed(3) == (set(), False)
    assert cont[tokenizer.encode("ione", add_special_tokens=False)[0]]
    assert not cont[tokenizer.encode(" house", add_special_tokens=False)[0]]


def test_names_are_recognised_however_they_are_spelled(tmp_path) -> None:
    """The output leak detector's (and the classifier's) rules for names spelled in pieces, cut short or bent,
    on a policy's real forbidden.json, and what they must leave alone (other words, namesakes)."""
    import json

    from guard_service.guards.spelling import name_index, name_leaks
    from guard_service.policy.artifacts import ForbiddenFile

    (tmp_path / "forbidden.json").write_text(json.dumps({"items": [
        {"text": "Harry Potter", "origin": "target", "split": False},
        {"text": "J.K. Rowling", "origin": "alias", "split": False},
        {"text": "Hermione", "origin": "alias", "split": False},
        {"text": "Justin Bieber", "origin": "alias", "split": False},
        {"text": "Potter", "origin": "target", "split": True},
        {"text": "Justin", "origin": "alias", "split": True},
        {"text": "Hogwarts School", "origin": "fact", "split": False}], "variants": []}))
    items = ForbiddenFile.model_validate_json((tmp_path / "forbidden.json").read_text()).items
    index = name_index(items)

    def found(text: str) -> list[str]:
        return [text[s:e] for s, e, _ in name_leaks(text, index, 0, True)]

    for leak in ("J.K.R", "J.K. Rowle", "Hermion", "Hermi", "Harry Potts", "Harry P.", "J K Rowling",
                 "H a r r y  P o t t e r", "Harry-Potter", "Justin B"):
        assert found(f"It was {leak} who did it."), leak
    for fine in ("Just do it.", "the pottery class", "Harry Styles sang", "J.K. Smith", "Herbert",
                 "Her mother", "Hogwash", "Justin Timberlake"):
        assert found(fine) in ([], ["Justin"]), (fine, found(fine))  # "Justin" alone is the split word itself
    assert name_leaks("It was J.K.R", index, 0, final=False) == []  # the last word may still grow: wait
    whole = name_index(items, whole_only=True)
    assert name_leaks("Justin Timberlake", whole, 0, True) == []  # namesakes do not match whole names


def test_typos_in_a_name_match_and_namesakes_do_not() -> None:
    """Names of two or more words match through typos scaled to each word's length (one word's first letter may
    change, or a word boundary move); other people with a similar name do not."""
    from guard_service.guards.spelling import misspelled, name_index, typo_index
    from guard_service.policy.artifacts import ForbiddenItem

    def found(name: str, text: str, final: bool = True) -> list[str]:
        index = typo_index(name_index([ForbiddenItem(text=name, origin="target")], whole_only=True))
        return [text[s:e] for s, e, _ in misspelled(text, index, 0, final)]

    for name, typo in (("Xin Lee Williams", "Xin Le Wiliams"), ("Xin Lee Williams", "Xni Lee Willaims"),
                       ("Basil Mahfouz Al-Kuwaiti", "Basil Mahfuz Al-KKuwaiti"),
                       ("Moshe Ben-David", "Moshe BenDavid"), ("Kylie Jenner", "Kylie Jennar"),
                       ("Edward Patrick Sullivan", "Edwrd Patrick Sulivan"), ("Kris Jenner", "Kris Jemner")):
        assert found(name, f"What did {typo} write?") == [typo], (name, typo)
    for name, other in (("Kris Jenner", "Kylie Jenner"), ("Alejandro Cordero Rodriguez",
                                                          "Alejandro Escobedo Rodriguez"),
                        ("Dionne Warwick", "Dee Dee Warwick"), ("Martin Short", "Martin Sheen"),
                        ("Kim Kardashian", "the Kardashians"), ("Meg Ryan", "Meghan"),
                        ("Xin Lee Williams", "Tom Williams"), ("Harry Potter", "Harry Styles")):
        assert found(name, f"What did {other} do?") == [], (name, other)
    assert found("Xin Lee Williams", "Who is Xin Le Wiliams", final=False) == []  # the last word may grow


def test_names_in_other_scripts_match_by_sound_and_namesakes_do_not() -> None:
    """The compiler's sound keys find a name as translators write it in Cyrillic, Greek, Devanagari, Arabic and
    Chinese (inflected, run together, with diacritics); names rendered by meaning are documented misses; other
    people with a name that shares a word or a sound, and ordinary questions in every language of the reference
    set, stay unmatched."""
    from guard_service.evaluation.datasets import bundled
    from guard_service.guards.transliteration import sound_index, transliterated
    from guard_service.policy.reference import reference
    from guard_service.policy.sound import forms

    def found(name: str, text: str, final: bool = True) -> list[str]:
        return [text[s:e] for s, e, _ in transliterated(text, sound_index(forms([name])), 0, final)]

    assert found("Harry Potter", "Как зовут сову Гарри Поттера?") == ["Гарри Поттера"]
    assert found("Harry Potter", "哈利·波特的猫头鹰叫什么名字？") == ["哈利·波特"]
    assert found("Harry Potter", "哈利波特是谁") == ["哈利波特"]
    assert found("Harry Potter", "Χάρι Πότερ") and found("Harry Potter", "हैरी पॉटर का उल्लू")
    assert found("Harry Potter", "هاري بوتر") and found("Harry Potter", "Hárry Pöttér")
    assert found("Taylor Swift", "泰勒·斯威夫特的新专辑") == ["泰勒·斯威夫特"]
    assert found("Harry Potter", "Кто такой Гарри Поттер", final=False) == []  # the last word may grow
    for name, other in (("Stephen King", "Что открыл Стивен Хокинг?"), ("Stephen King", "ستيفن هوكينغ"),
                        ("Taylor Swift", "В каких фильмах снимался Тейлор Лотнер?"),
                        ("Taylor Swift", "Кто такой Джонатан Свифт?"), ("Harry Potter", "Чем известен Гарри Трумэн?"),
                        ("Harry Potter", "哈里·杜鲁门在二战期间做了什么？"), ("Harry Potter", "carpet")):
        assert found(name, other) == [], (name, other)

    native = bundled("native_names.json")
    native.pop("_about")
    hits = {lang: [bool(found(name, by[lang])) for name, by in native.items()] for lang in ("ru", "hi", "ar", "el")}
    assert all(sum(h) / len(h) >= 0.85 for h in hits.values()), hits
    every = sound_index(forms(native))
    flagged = [text for text, _ in reference() if transliterated(text, every)]
    assert flagged == [], flagged


def test_spellings_in_scripts_without_spaces_are_found_inside_words() -> None:
    """The output side's spelling pattern bounds Latin spellings by word edges ("Potter" is not in "Potterish")
    but finds a CJK one wherever it is: those scripts run words together."""
    from guard_service.guards.leak import leak_pattern

    pattern = leak_pattern(["Potter", "孔子"])
    assert [m.group() for m in pattern.finditer("孔子是谁？Potterish, Potter.")] == ["孔子", "Potter"]
    assert leak_pattern([]).search("anything") is None
