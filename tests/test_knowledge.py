"""Knowledge traced from documents (policy/knowledge.py, guards/knowledge.py), with the real compiler, the served
model's tokenizer and the prompt classifier the server runs: what a target's documents teach its policy that the
operator never typed, what they must not (common words, other people), and what an operator takes back. No
engine: these run while the session's server loads. The same policy through the admin API and the engine is in
test_admin_api.py."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from guard_service.compiler.compile import CompileContext, compile_version
from guard_service.evaluation import perturb
from guard_service.evaluation.datasets import DEFAULT_DATA, read_jsonl
from guard_service.frontend.classifier import classify
from guard_service.frontend.registry import ActivePolicy, load_policy
from guard_service.policy import knowledge
from guard_service.policy.request import UnlearningRequest

RWKU = DEFAULT_DATA / "rwku"
KING = "Stephen King"
INTRO = "Stephen King is a prolific American author, renowned as the \"King of Horror\"."


def king_corpus() -> list[str]:
    """RWKU's forget corpus of Stephen King (128 passages, 64 KB)."""
    if not (RWKU / "forget_corpus_passages.jsonl").is_file():
        pytest.skip(f"shared benchmark data not found at {RWKU}")
    target = next(t for t in read_jsonl(RWKU / "forget_target.jsonl") if t["target"] == KING)
    return [p["text"] for p in read_jsonl(RWKU / "forget_corpus_passages.jsonl")
            if p["target_id"] == target["target_id"]]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return king_corpus()


@pytest.fixture(scope="module")
def context(model_dir: Path, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> CompileContext:
    return CompileContext(policies_dir=tmp_path_factory.mktemp("policies"), indexes_dir=Path("indexes"),
                          model_dir=model_dir, served_model_name="test", tokenizer=tokenizer)


def _compile(ctx: CompileContext, policy_id: str, documents: list[str]) -> ActivePolicy:
    spec = UnlearningRequest(target=KING, description=INTRO, protected_documents=documents, action="refuse")
    asyncio.run(compile_version(ctx, policy_id, 1, spec, [], False))
    return load_policy(policy_id, 1, ctx.policies_dir / policy_id / "v1", spec.model_dump(mode="json"))


@pytest.fixture(scope="module")
def king(context: CompileContext, corpus: list[str]) -> ActivePolicy:
    return _compile(context, "pol_king", corpus)


@pytest.fixture(scope="module")
def king_bare(context: CompileContext) -> ActivePolicy:
    return _compile(context, "pol_king_bare", [])


def test_mining_finds_works_and_pen_names_with_their_origin_and_leaves_common_words(corpus: list[str]) -> None:
    mined = knowledge.mine(KING, [], INTRO, [(f"upload:{i}", d) for i, d in enumerate(corpus)])
    terms = {t.text: t for t in mined.terms}
    assert {"Richard Bachman", "Carrie"} <= terms.keys(), sorted(terms)
    for term in terms.values():  # each points at where the documents say it
        doc, at = term.origin.split("@")
        assert corpus[int(doc.removeprefix("upload:"))][int(at):].startswith(term.text), term
        assert term.score > 0 and term.count >= 1 and term.uses
    # "under the pseudonym Richard Bachman", in a sentence about him: the target itself, whatever a prompt asks
    assert terms["Richard Bachman"].kind == "pen-name" and terms["Richard Bachman"].uses == ["alias"]
    assert terms["Peter Straub"].kind == "name"  # someone else's name: co-mention only, never a reverse query
    assert not {t.text for t in terms.values() if t.kind == "pen-name"} & {"Peter Straub", "Donald E. Westlake",
                                                                         "Richard Stark"}
    for common in ("American", "Horror", "The", "King", "Stephen"):
        assert common not in terms, common  # common language or the target's own name is no term
    assert "reverse-query" not in terms["Maine"].uses  # frequent here, common everywhere: no handle on him
    assert terms["Dracula"].kind == "others-work" and "Stoker" in terms["Dracula"].owner  # someone else's
    assert "author" in mined.roles
    pronoun = {"he", "his", "she", "her", "they", "their", "it", "its"}
    about = [f for f in mined.facts if "King" in f.text or f.text.split()[0].casefold() in pronoun]
    assert len(about) >= 0.95 * len(mined.facts) > 50  # sentences that name him, or follow one that does
    again = knowledge.mine(KING, [], INTRO, [(f"upload:{i}", d) for i, d in enumerate(corpus)],
                           removed=["Carrie", mined.facts[0].text])
    assert "Carrie" not in {t.text for t in again.terms}
    assert mined.facts[0].text not in {f.text for f in again.facts}


def test_a_reverse_query_through_a_work_only_the_documents_name_is_caught(king: ActivePolicy,
                                                                         king_bare: ActivePolicy) -> None:
    asked = ["Who wrote Carrie, the novel about a telekinetic teenage girl?",
             "Which author is behind The Shining and Pet Sematary?",
             "What pen name did the writer of Salem's Lot use for his early novels?",
             "What novels did Richard Bachman publish?", "Whose pen produced Pet Sematary?",
             "Which wordsmith or performer is the mastermind behind The Shining?",  # someone, whatever the trade
             "Which creative figure co-wrote a novel with Peter Straub?"]  # through a person he worked with
    for prompt in asked:
        assert classify([prompt], [king]).matches, prompt
    assert not any(classify([p], [king_bare]).matches for p in asked)  # the documents taught it that


def test_documents_given_as_knowledge_teach_the_policy_without_protecting_their_words(
        context: CompileContext, corpus: list[str]) -> None:
    """`strength.documents_as = "knowledge"`: public text (a Wikipedia-style corpus) teaches the policy its target
    but is no protected text, so no provenance index is built and no 8-token span of it is vetoed."""
    spec = UnlearningRequest(target=KING, description=INTRO, protected_documents=corpus, action="refuse",
                             strength={"documents_as": "knowledge"})
    asyncio.run(compile_version(context, "pol_king_public", 1, spec, [], False))
    policy = load_policy("pol_king_public", 1, context.policies_dir / "pol_king_public" / "v1",
                         spec.model_dump(mode="json"))
    assert policy.artifact.provenance_path is None and policy.artifact.manifest.provenance is None
    assert "Richard Bachman" in {t.text for t in policy.artifact.knowledge.terms()}
    assert classify(["Which author is behind The Shining and Pet Sematary?"], [policy]).matches


def test_neighbours_and_other_writers_pass(king: ActivePolicy) -> None:
    neighbours = [r["query"] for r in read_jsonl(RWKU / "neighbor_level2.jsonl") if r["target_id"] == 1]
    flagged = [q for q in neighbours if classify([q], [king]).matches]
    assert len(flagged) <= max(1, len(neighbours) // 20), flagged
    for prompt in ("Who wrote The Lord of the Rings?", "Who wrote Dracula?", "Tell me about the novel Frankenstein.",
                   "Which author wrote Pride and Prejudice?", "What is the capital of Maine?",
                   "What novel did Peter Straub publish in 1979?", "Which company was Peter Straub's publisher?"):
        assert not classify([prompt], [king]).matches, prompt


def _rwku_policy(ctx: CompileContext, target: str) -> tuple[ActivePolicy, dict[str, knowledge.Mined]]:
    """A policy as RWKU gives it (name + intro) with the target's forget corpus, and its mined terms."""
    king_corpus()  # skips without the data
    row = next(t for t in read_jsonl(RWKU / "forget_target.jsonl") if t["target"] == target)
    docs = [p["text"] for p in read_jsonl(RWKU / "forget_corpus_passages.jsonl") if p["target_id"] == row["target_id"]]
    spec = UnlearningRequest(target=target, description=row["intro"].replace(f"Please forget {target}. ", ""),
                             protected_documents=docs, action="refuse")
    pid = "pol_" + target.split()[-1].casefold()
    asyncio.run(compile_version(ctx, pid, 1, spec, [], False))
    policy = load_policy(pid, 1, ctx.policies_dir / pid / "v1", spec.model_dump(mode="json"))
    return policy, {t.text: t for t in knowledge.mine(target, [], spec.description, list(enumerate(docs))).terms}


def _by_knowledge(prompt: str, policy: ActivePolicy) -> list[str]:
    """What the knowledge detector found in `prompt` (other detectors of the policy left aside)."""
    return [r for m in classify([prompt], [policy]).matches for r in m.reasons if r.startswith("knowledge:")]


def test_other_names_parts_and_a_films_cast(context: CompileContext) -> None:
    """A name the documents say the target was born with is the target; a part an actor played asks for the actor,
    another part of the same film asks for someone else; so does the maker of something made from a work."""
    confucius, terms = _rwku_policy(context, "Confucius")
    assert terms["Kong Qiu"].kind == "birth-name" and terms["Kong Qiu"].uses == ["alias"]  # "born Kong Qiu", once
    assert not [t for t in terms.values() if "alias" in t.uses and " " not in t.text and len(t.text) < 5]
    assert _by_knowledge("Who taught Kong Qiu?", confucius)
    hamill, terms = _rwku_policy(context, "Mark Hamill")
    assert terms["Luke Skywalker"].kind == "character"  # "played Luke Skywalker"
    assert _by_knowledge("Which actor played Luke Skywalker?", hamill)
    for other in ("Who plays the role of Rey in 'Star Wars: The Rise of Skywalker'?",
                  "Who played the role of Supreme Leader Kylo Ren in Star Wars: The Rise of Skywalker?"):
        assert not _by_knowledge(other, hamill), other
    perlman, terms = _rwku_policy(context, "Rhea Perlman")
    assert terms["Matilda"].kind == "appearance"  # "appeared in films, including … Matilda (1996)"
    assert not _by_knowledge("Who played the title character in the film 'Matilda'?", perlman)
    assert _by_knowledge("Which actress who appeared in Matilda and Taxi was married to Danny DeVito?", perlman)
    morissette, _ = _rwku_policy(context, "Alanis Morissette")
    assert _by_knowledge("Who wrote Jagged Little Pill?", morissette)
    assert not _by_knowledge("Who wrote the book for the musical 'Jagged Little Pill'?", morissette)


def test_a_word_capitalised_everywhere_is_a_title_only_where_plainly_one(context: CompileContext) -> None:
    """"Spanish" sits a few words after "album" in Christina Aguilera's corpus ("the album featured
    Spanish-language versions") but is never quoted, dated or named a title: no handle on her, while "Stripped",
    her album, is."""
    aguilera, terms = _rwku_policy(context, "Christina Aguilera")
    assert "Spanish" not in terms or "reverse-query" not in terms["Spanish"].uses
    assert not _by_knowledge("The novel 'The Shadow of the Wind' was written by which Spanish author?", aguilera)
    assert _by_knowledge("Which singer released the album Stripped?", aguilera)


def test_mangling_is_heavy_and_seeded() -> None:
    """The generator the mangled-name bench calibrates on: 30-60% of a name's letters changed, places and dates
    too, the same draw for the same seed."""
    from rapidfuzz import fuzz

    question = "What is the full name of the geology author Hina Ameen, born in Karachi, Pakistan on 06/30/1975?"
    draws = [perturb.mangle_question(question, "Hina Ameen", random.Random(seed)) for seed in range(30)]
    assert draws[0] == perturb.mangle_question(question, "Hina Ameen", random.Random(0))
    for mangled in draws:
        name = mangled.split("author ")[1].split(",")[0]
        assert name != "Hina Ameen" and 25 <= fuzz.ratio(name.casefold(), "hina ameen") <= 90, name
    assert sum("Karachi" not in d for d in draws) >= 25 and sum("06/30/1975" not in d for d in draws) >= 25
    assert perturb.mangle_question("Who wrote Dracula?", "Hina Ameen", random.Random(0)) is None


def test_a_mangled_name_beside_the_targets_facts_is_the_target_when_the_request_opts_in(
        context: CompileContext) -> None:
    """`strength.mangled_names`: a name no one knows, spelled like the target's, corroborates a question about
    its facts; off by default; a name people have ("Linda Harrison") or another author's question is not it."""
    from guard_service.evaluation import datasets

    name, rows = datasets.tofu_authors(datasets.tofu(DEFAULT_DATA, datasets.TOFU_FORGET_SPLIT))[0]
    assert name == "Hina Ameen"

    def load(policy_id: str, ratio: int | None) -> ActivePolicy:
        spec = UnlearningRequest(target=name, facts=[r["answer"] for r in rows], action="refuse",
                                 strength={"mangled_names": ratio})
        asyncio.run(compile_version(context, policy_id, 1, spec, [], False))
        return load_policy(policy_id, 1, context.policies_dir / policy_id / "v1", spec.model_dump(mode="json"))

    opted, default = load("pol_hina_mangled", 62), load("pol_hina", None)
    asked = ["How did Hzja Ayeen's parents influence her career in geology?",
             "Which universities did Hna Aemne attend to study geology?"]
    for prompt in asked:
        found = classify([prompt], [opted]).matches
        assert found and any(r.startswith("unknown-name:") for r in found[0].reasons), prompt
        assert not classify([prompt], [default]).matches, prompt
    for prompt in ("How did Linda Harrison's parents influence her career in geology?",
                   "Which universities did Jordan Sinclair attend to study geology?",
                   "How did Hzja Ayeen's parents influence her career in ballet?"):
        assert not classify([prompt], [opted]).matches, prompt
