"""Hold mode's partial release (frontend/output_guard.py, `LeakScanner.releasable`), in process with the real
tokenizer's deltas and real compiled policies: text is released as soon as nothing in it can still become a leak,
and no part of a name acted on, nor the whole of a sentence judged a leak, is ever released. The same through the
real engine and HTTP: tests/test_output_guard.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.common import compile_context, compile_policies, token_deltas
from guard_service.compiler.compile import compile_version
from guard_service.frontend.decision import GuardDecision, Verdict
from guard_service.frontend.output_guard import CONTENT_FILTER, OutputGuard
from guard_service.frontend.registry import ActivePolicy, PolicyRegistry
from guard_service.guards.leak import UNWEIGHED_ZIPF, _combined
from guard_service.policy.knowledge import general_zipf
from guard_service.policy.request import UnlearningRequest
from guard_service.protocol import GuardArgs
from guard_service.serving.generation import ChoiceDelta
from guard_service.store.base import open_store

SPECS = {
    "pol_hp": UnlearningRequest(target="Harry Potter", aliases=["J.K. Rowling", "Hermione Granger"], action="refuse",
                                strength={"expand_knowledge": False}),
    "pol_lv": UnlearningRequest(target="Leonardo da Vinci", aliases=["da Vinci"], action="refuse",
                                facts=["Leonardo da Vinci painted the Mona Lisa."],
                                strength={"expand_knowledge": False}),
}
# (answer, where the leak begins): names in several spellings, several words into a sentence, across deltas
NAMES = [
    ("The boy in the books is Harry Potter, of course.", "Harry"),
    ("The series was written by J. K. Rowling in the nineties.", "J. K."),
    ("Everyone remembers that Hary Poter is a young wizard.", "Hary"),
    ("Her best friend is Hermione Grangr, a clever witch.", "Hermione"),
    ("My favourite character is Harry Potts from the novels.", "Harry"),
    ("Главный герой книги — Гарри Поттер, юный волшебник.", "Гарри"),
    ("这本书的主角是哈利·波特，一个年轻的巫师。", "哈利"),
    ("My neighbour named her old dog after Leonardo da Vinci, oddly enough.", "Leonardo"),
]
BENIGN = [
    "Bread rises because yeast eats the sugars in the dough and gives off carbon dioxide, which is trapped by "
    "the gluten. A warm kitchen speeds it up.",
    "The lighthouse keeper climbed the stairs every evening to light the lamp. Ships passing in the night saw it "
    "from miles away and steered clear of the rocks.",
]


@pytest.fixture(scope="module")
def policies(model_dir: Path, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> list[ActivePolicy]:
    return compile_policies(SPECS, model_dir, tokenizer, tmp_path_factory.mktemp("policies"))


def stream(policies: list[ActivePolicy], pieces: list[str], mode: str = "hold",
           streaming: bool = True) -> tuple[list[str], list, OutputGuard]:
    """What a client receives after each delta (the text released so far), the finish reasons, the guard."""
    guard = OutputGuard([GuardDecision(Verdict.passed)], policies, 1, [""], [GuardArgs()], None, 240, mode,
                        streaming)

    async def run() -> tuple[list[str], list]:
        sent, seen, finishes = "", [], []
        for i, piece in enumerate(pieces):
            step = await guard.on_delta(ChoiceDelta(0, piece, [i], None, "stop" if i == len(pieces) - 1 else None))
            if step.emit is not None:
                sent += step.emit.text
                finishes += [step.emit.finish_reason] if step.emit.finish_reason else []
            seen.append(sent)
            if guard.all_over(1):
                break
        return seen, finishes

    seen, finishes = asyncio.run(run())
    return seen, finishes, guard


def test_no_part_of_a_name_is_released_and_the_text_before_it_streams(policies, tokenizer) -> None:
    for text, start in NAMES:
        seen, finishes, _ = stream(policies, token_deltas(tokenizer, text))
        at = text.index(start)
        assert finishes == [CONTENT_FILTER], (text, seen)
        assert all(text.startswith(s) and len(s) <= at for s in seen), (text, seen)  # nothing from the name on
        if text.isascii():  # the words before the name went out before it came (a word behind, at most)
            assert len(seen[-1]) >= len(text[:at].rstrip().rsplit(" ", 1)[0]), (text, seen)


def test_a_fact_without_a_name_is_held_from_where_it_turns_and_never_released_whole(policies, tokenizer) -> None:
    text = ("The Louvre is the largest museum in Paris. Its most famous picture is the Mona Lisa, painted in "
            "Florence in the early sixteenth century. It draws millions.")
    seen, finishes, guard = stream(policies, token_deltas(tokenizer, text))
    leaking = "Its most famous picture is the Mona Lisa, painted in Florence in the early sixteenth century."
    assert finishes == [CONTENT_FILTER], seen
    assert [lk.kind for lk in guard.choices[0].scanners[0].leaks if lk.act] == ["semantic"]
    assert all(text.startswith(s) and leaking not in s and "Mona" not in s for s in seen), seen


def test_benign_text_streams_a_word_behind_the_model(policies, tokenizer) -> None:
    for text in BENIGN:
        pieces = token_deltas(tokenizer, text)
        seen, finishes, _ = stream(policies, pieces)
        assert finishes == ["stop"] and seen[-1] == text
        assert seen[0] == pieces[0]  # the first word at once: the time to first text is the model's
        so_far = ""
        for piece, sent in zip(pieces, seen, strict=True):
            so_far += piece
            held = so_far[len(sent):]
            # at most the word still being written, a sentence's end not yet followed by the next, or a name-like
            # start (the last two words), and the words as frequent as "in the" before them, weighed with the
            # next rarer word
            assert all(general_zipf(w.casefold()) >= UNWEIGHED_ZIPF for w in held.split()[:-2]), (so_far, sent)


def test_one_word_names_alone_stream_and_are_held(model_dir: Path, tokenizer, tmp_path: Path) -> None:
    """No applicable policy has a name of two words (nothing to match with typos)."""
    one = compile_policies({"pol_vo": UnlearningRequest(target="Voldemort", action="refuse",
                                                strength={"expand_knowledge": False})}, model_dir, tokenizer, tmp_path)
    seen, finishes, _ = stream(one, token_deltas(tokenizer, BENIGN[0]))
    assert finishes == ["stop"] and seen[-1] == BENIGN[0]
    text = "In the story the dark wizard Voldemort returns."
    seen, finishes, _ = stream(one, token_deltas(tokenizer, text))
    assert finishes == [CONTENT_FILTER] and "Vol" not in seen[-1] and seen[-1].startswith("In the story"), seen


def test_release_mode_sends_at_once_and_ends_the_choice_at_the_first_judged_leak(policies, tokenizer) -> None:
    text = "The Louvre is in Paris. Its most famous picture is the Mona Lisa, painted in Florence. It draws millions."
    pieces = token_deltas(tokenizer, text)
    seen, finishes, guard = stream(policies, pieces, mode="release")
    assert finishes == [CONTENT_FILTER]
    ended = len(seen) - 1
    assert seen[ended - 1] == "".join(pieces[:ended])  # every delta went out as it came, until the leak was judged
    assert "Mona Lisa" in seen[-1]  # the trade-off: what was sent before the judgement stays sent
    checked = guard.detail().checked
    assert checked is not None and len(seen[-1]) >= checked[0] >= text.index(" It draws")
    names, finishes, _ = stream(policies, token_deltas(tokenizer, NAMES[0][0]), mode="release")
    assert finishes == [CONTENT_FILTER] and "Potter" not in names[-1]  # a delta that completes a name is not sent


def test_a_reload_builds_the_output_side_before_the_first_request(model_dir: Path, tokenizer, tmp_path: Path) -> None:
    """The scanners' state over every policy (names, spellings, facts at once) is built in the registry's reload
    thread, so the first stream after a policy change finds it ready instead of building it on its first delta."""
    store = open_store(f"sqlite:///{tmp_path / 'guard.sqlite3'}")
    ctx = compile_context(model_dir, tokenizer, tmp_path / "policies")
    for spec in SPECS.values():
        request_id = store.create(spec.model_dump(mode="json"), "ops", None)
        manifest = asyncio.run(compile_version(ctx, request_id, 1, spec, [], False))
        assert store.claim(request_id, 1, "test")
        assert store.activate(request_id, 1, str(ctx.policies_dir / request_id / "v1"), manifest.model_dump())
    registry = PolicyRegistry(store, model_dir=model_dir)
    before = _combined.cache_info()
    assert registry.refresh() and len(registry.active()) == len(SPECS)
    reloaded = _combined.cache_info()
    assert reloaded.misses == before.misses + 1  # this set of policies, built by the reload
    seen, finishes, _ = stream(registry.active(), token_deltas(tokenizer, NAMES[0][0]))
    after = _combined.cache_info()
    assert after.misses == reloaded.misses and after.hits > reloaded.hits  # the stream found it built
    assert finishes == [CONTENT_FILTER] and "Harry" not in seen[-1]


def test_a_name_the_output_ends_in_is_caught_in_both_modes(policies, tokenizer) -> None:
    """An answer cut short inside a name ("Harry Pott", max_tokens reached) is judged by the end-of-output
    check before its last delta goes out, in release mode as in hold mode."""
    pieces = token_deltas(tokenizer, "The hero of those books is Harry Pott")
    for mode in ("hold", "release"):
        seen, finishes, _ = stream(policies, pieces, mode=mode)
        assert finishes == [CONTENT_FILTER] and "Pott" not in seen[-1], (mode, seen)


def test_a_request_not_streamed_is_judged_a_sentence_at_a_time_with_the_same_outcome(policies, tokenizer) -> None:
    """Its client reads nothing before the end: the guard moves at sentence ends only, and decides as it does
    for a stream (text before a leak in the same sentence is kept back with it)."""
    for text in [*BENIGN, *(t for t, _ in NAMES), "The Louvre is in Paris. Its most famous picture is the Mona "
                 "Lisa, painted in Florence. It draws millions."]:
        pieces = token_deltas(tokenizer, text)
        streamed, streamed_end, _ = stream(policies, pieces)
        seen, finishes, _ = stream(policies, pieces, streaming=False)
        # the same decision; on a leak it may keep back the start of the sentence a stream had already received
        assert finishes == streamed_end and streamed[-1].startswith(seen[-1]), (text, seen[-1], streamed[-1])
        assert finishes == [CONTENT_FILTER] or seen[-1] == text
        moved = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
        sofar = ["".join(pieces[:i + 1]) for i in range(len(pieces))]
        # released text moves only where the text so far holds a sentence end, or at the end
        assert all(i == len(seen) - 1 or any(ch in sofar[i][len(seen[i - 1]):] for ch in ".!?。\n")
                   for i in moved), (text, seen)


def test_a_sentence_that_opens_with_a_facts_phrase_is_held_from_it(policies, tokenizer) -> None:
    """A phrase of a policy's facts in a sentence's first words (shorter than any sentence the semantic check
    weighs), or at the start of the output (a completion continuing the prompt's sentence), is held while it may
    still be growing into the phrase and, once whole, holds its sentence until the sentence is judged."""
    for text in [" Mona Lisa, but there are many others, including the Venus de Milo, the Mona Lisa, and the "
                 "Sistine ceiling.", "The Mona Lisa was painted by the Florentine master in the early sixteenth "
                 "century.", "Mona Lisa is the portrait that the Florentine master painted around 1503."]:
        seen, finishes, _ = stream(policies, token_deltas(tokenizer, text))
        assert finishes == [CONTENT_FILTER] and not any("Mona" in s for s in seen), (text, seen)
