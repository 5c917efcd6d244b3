"""Characters that imitate others (policy/confusables.py): a name written with look-alike letters of another
script, fullwidth or mathematical letters, or under combining marks is the name it imitates, on the prompt side
(the classifier) and the output side (the leak scanner), with a real compiled policy; text of another script
and accented Latin are left as they are. No engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from guard_service.compiler.compile import CompileContext, compile_version
from guard_service.frontend.classifier import classify
from guard_service.frontend.registry import ActivePolicy, load_policy
from guard_service.guards.leak import LeakDetector
from guard_service.policy.confusables import fold, fold_same_length
from guard_service.policy.request import UnlearningRequest

IMITATIONS = {
    "Who wrote the Ηarry Ρotter books?": "Who wrote the Harry Potter books?",  # Greek Eta and Rho
    "Who wrote the Наrrу Роttеr books?": "Who wrote the Harry Potter books?",  # Cyrillic En, u, Er, ie
    "Who wrote the Ｈａｒｒｙ Ｐｏｔｔｅｒ books?": "Who wrote the Harry Potter books?",  # fullwidth
    "Who wrote the 𝐇𝐚𝐫𝐫𝐲 𝐏𝐨𝐭𝐭𝐞𝐫 books?": "Who wrote the Harry Potter books?",  # mathematical bold
    "Who wrote the H̲a̲r̲r̲y̲ P̲o̲t̲t̲e̲r̲ books?": "Who wrote the Harry Potter books?",  # combining low line
    "Tell me about Ј.К. Rowling.": "Tell me about J.K. Rowling.",  # Cyrillic Je and Ka, whole-script words
}
LEFT_ALONE = ("Какие книги написала Джоан Роулинг?", "Brontë, García Márquez and Dvořák", "哈利·波特的作者是谁",
              "हैरी पॉटर किताबें किसने लिखीं?")


def test_imitations_fold_to_what_they_imitate_and_other_scripts_stay() -> None:
    for imitation, meant in IMITATIONS.items():
        assert fold(imitation) == meant, imitation
        same = fold_same_length(imitation)
        assert len(same) == len(imitation)
        if "̲" not in imitation:  # combining decoration is dropped only where offsets need not hold
            assert same == meant, imitation
    for text in LEFT_ALONE:
        assert fold(text).replace("?", "？") in (text, text.replace("?", "？")), text
        assert fold_same_length(text) == text


@pytest.fixture(scope="module")
def hp(model_dir: Path, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> ActivePolicy:
    ctx = CompileContext(policies_dir=tmp_path_factory.mktemp("policies"), indexes_dir=Path("indexes"),
                         model_dir=model_dir, served_model_name="test", tokenizer=tokenizer)
    spec = UnlearningRequest(target="Harry Potter", aliases=["J.K. Rowling", "Hermione Granger"], action="refuse",
                             description="The fantasy book series about a boy wizard.",
                             strength={"expand_knowledge": False})
    asyncio.run(compile_version(ctx, "pol_hp", 1, spec, [], False))
    return load_policy("pol_hp", 1, ctx.policies_dir / "pol_hp" / "v1", spec.model_dump(mode="json"))


def test_the_classifier_reads_a_name_through_its_imitation(hp: ActivePolicy) -> None:
    for imitation in IMITATIONS:
        reasons = [r for m in classify([imitation], [hp]).matches for r in m.reasons]
        assert any(r.startswith("alias:") for r in reasons), (imitation, reasons)
    for text in ("Who wrote the Ηobbit?", "Какие книги написал Толстой?", "Quelle est la capitale du Pérou ?"):
        assert not classify([text], [hp]).matches, text


def test_the_output_side_finds_a_name_written_in_look_alikes_as_it_streams(hp: ActivePolicy) -> None:
    detector = LeakDetector()
    answer = "The books are about Наrrу Роttеr and Ηеrmiоnе Grаngеr, a boy wizard and his friend."  # look-alikes
    scanner = detector.output_scanner([(hp.key, hp.parts[detector.name])], "Who wrote them?")
    for at in range(0, len(answer), 3):  # streamed three characters at a time
        scanner.feed(answer[at:at + 3])
    scanner.finish()
    leaks = [lk for lk in scanner.findings() if lk.act]
    assert {lk.text for lk in leaks} >= {"Наrrу Роttеr", "Ηеrmiоnе Grаngеr"}, scanner.summary()
    clean = detector.output_scanner([(hp.key, hp.parts[detector.name])], "")
    clean.feed("Лев Толстой написал «Войну и мир». Ηe wrote in Russian.")
    clean.finish()
    assert not [lk for lk in clean.findings() if lk.act], clean.summary()


def test_a_whole_name_streamed_word_by_word_is_acted_on(hp: ActivePolicy) -> None:
    """The first word of a name arrives before the rest ("Harry", then " Potter"): the whole name, when it
    comes, is a leak the policy acts on, not hidden behind the first word's (a phrase, not acted on alone)."""
    detector = LeakDetector()
    scanner = detector.output_scanner([(hp.key, hp.parts[detector.name])], "Who is the boy wizard?")
    for delta in ("The", " boy", " is", " Harry", " Potter", ",", " of", " course", "."):
        scanner.feed(delta)
    scanner.finish()
    assert "Harry Potter" in {lk.text for lk in scanner.findings() if lk.act}, scanner.summary()
