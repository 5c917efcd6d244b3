"""Knowledge traced from documents (issue #24), measured offline with the compiler and the prompt classifier the
server runs (no engine: the served model's tokenizer only). Each policy is compiled twice, as RWKU's setting
gives it (a name and a one-line intro) and with its documents too, and asked what the documents hold and the
operator never typed:

    RWKU: the first N targets, documents = their forget corpus; recall on their level-1/level-2 questions and on
        `perturb.knowledge_probes` (reverse, synonym, prefix: the target asked for through its works and
        associates, items taken from RWKU's own answers that the corpus contains); false positives on their
        neighbour questions and on the shipped reference set.
    Harry Potter: a policy as a user writes one (the name, six aliases, a description; kind topic), documents =
        the MUSE-Books fan-wiki articles; recall on HP trivia and WHP familiarity prompts; false positives on
        the side-effect domains (Lord of the Rings, Oz, D&D, British mythology) and the reference set.
    Compile cost: the same Harry Potter policy with 0.25 / 0.5 / 1 / 2.8 MB of the articles.

    .venv/bin/python -m bench.knowledge [--rwku-targets 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from bench.common import print_table, write_json
from guard_service.compiler.compile import CompileContext, compile_version, warm_caches
from guard_service.config import Settings
from guard_service.evaluation import perturb
from guard_service.evaluation.datasets import DEFAULT_DATA as DATA
from guard_service.evaluation.datasets import familiarity_prompts, read_jsonl
from guard_service.frontend.classifier import classify
from guard_service.frontend.registry import load_policy
from guard_service.policy.knowledge import roles_of
from guard_service.policy.reference import reference
from guard_service.policy.request import UnlearningRequest

HP_POLICY = {"target": "Harry Potter", "kind": "topic", "description": "The fantasy book series about a boy wizard, "
             "its author and its world.", "aliases": ["J.K. Rowling", "Hogwarts", "Hermione", "Ron Weasley",
                                                      "Dumbledore", "Voldemort"]}
SIDE_EFFECTS = ("lord_of_the_rings", "wizard_of_oz", "dungeons_and_dragons", "british_mythology")


def compile_policies(ctx: CompileContext, specs: list[dict], tag: str) -> tuple[list, float]:
    began, policies = time.perf_counter(), []
    for i, raw in enumerate(specs):
        spec = UnlearningRequest.model_validate({"action": "refuse", "strength": {"expand_knowledge": False}, **raw})
        pid = f"pol_{tag}{i:03d}"
        asyncio.run(compile_version(ctx, pid, 1, spec, [], False))
        policies.append(load_policy(pid, 1, ctx.policies_dir / pid / "v1", spec.model_dump(mode="json")))
    return policies, time.perf_counter() - began


def caught(policies: list, prompts: list[str]) -> tuple[float, list[str]]:
    hits = [p for p in prompts if classify([p], policies).matches]
    return len(hits) / max(1, len(prompts)), hits


def rwku(ctx: CompileContext, n: int, seed: int) -> dict:
    targets = read_jsonl(DATA / "rwku" / "forget_target.jsonl")[:n]
    ids = {t["target_id"] for t in targets}
    passages = [r for r in read_jsonl(DATA / "rwku" / "forget_corpus_passages.jsonl") if r["target_id"] in ids]
    level1 = [r for r in read_jsonl(DATA / "rwku" / "forget_level1.jsonl") if r["target_id"] in ids]
    level2 = [r for r in read_jsonl(DATA / "rwku" / "forget_level2.jsonl") if r["target_id"] in ids]
    neighbours = [r["query"] for r in read_jsonl(DATA / "rwku" / "neighbor_level2.jsonl") if r["target_id"] in ids]
    rng = random.Random(seed)
    probes: dict[str, list[str]] = {k: [] for k in perturb.KNOWLEDGE_CLASSES}
    specs_plain, specs_docs = [], []
    for t in targets:
        about = t["intro"].replace(f"Please forget {t['target']}. ", "")
        docs = [p["text"] for p in passages if p["target_id"] == t["target_id"]]
        specs_plain.append({"target": t["target"], "description": about})
        specs_docs.append({"target": t["target"], "description": about, "protected_documents": docs})
        rows = [r for r in level1 + level2 if r["target_id"] == t["target_id"]]
        items = perturb.knowledge_items(rows, t["target"], "\n".join(docs))
        role = next(iter(roles_of([about])), "person")
        for kind, made in perturb.knowledge_probes(items, t["target"], role, rng, 4).items():
            probes[kind] += [m["messages"][-1]["content"] for m in made]
    sets = {"level 1 (cloze)": [r["query"] for r in level1], "level 2": [r["query"] for r in level2], **probes}
    negatives = {"RWKU neighbours": neighbours, "reference set": [text for text, _ in reference()]}
    out: dict = {"targets": n, "probes": {k: len(v) for k, v in sets.items()}, "arms": {}}
    for arm, specs in (("name + intro", specs_plain), ("name + intro + forget corpus", specs_docs)):
        policies, seconds = compile_policies(ctx, specs, "r" if arm == "name + intro" else "rd")
        recall = {k: caught(policies, v)[0] for k, v in sets.items()}
        fp = {}
        for k, v in negatives.items():
            fp[k], hits = caught(policies, v)
            fp[k + " examples"] = hits[:8]
        out["arms"][arm] = {"compile_s": round(seconds, 1), "recall": recall, "false_positive": fp,
                            "missed_examples": {k: [p for p in v if not classify([p], policies).matches][:4]
                                                for k, v in probes.items()}}
    return out


def harry_potter(ctx: CompileContext) -> dict:
    hp = DATA / "harry_potter"
    wiki = [a for f in ("retain1.json", "retain2.json") for a in json.loads((DATA / "muse/books/raw" / f).read_text())]
    trivia = [json.loads(line)["question"] for line in (hp / "trivia/hp_trivia_test.jsonl").read_text().splitlines()]
    familiarity = [p["prompt"] for p in familiarity_prompts(hp / "whp_familiarity/evaluation_prompts.json")]
    sides = {name: [json.loads(line)["question"] for line in (hp / f"side_effects/{name}.jsonl").read_text()
                    .splitlines()] for name in SIDE_EFFECTS}
    out: dict = {"arms": {}}
    for arm, docs in (("name + aliases + description", []), ("... + fan-wiki articles", wiki)):
        policies, seconds = compile_policies(ctx, [{**HP_POLICY, "protected_documents": docs}], f"h{len(docs)}")
        out["arms"][arm] = {
            "compile_s": round(seconds, 1),
            "recall": {"HP trivia (test, 239)": caught(policies, trivia)[0],
                       "WHP familiarity (300)": caught(policies, familiarity)[0]},
            "false_positive": {**{f"side effects: {k}": caught(policies, v)[0] for k, v in sides.items()},
                               "reference set": caught(policies, [t for t, _ in reference()])[0]},
            "mined_terms": len(policies[0].artifact.knowledge.terms())}
    costs = []
    text = "\n\n".join(wiki)
    for mb in (0.25, 0.5, 1.0, len(text) / 1e6):
        cut = text[:int(mb * 1e6)]
        began = time.perf_counter()
        manifest = asyncio.run(compile_version(ctx, f"pol_cost{int(mb * 100)}", 1, UnlearningRequest.model_validate(
            {**HP_POLICY, "protected_documents": [cut], "strength": {"expand_knowledge": False}}), [], False))
        costs.append({"mb": round(len(cut) / 1e6, 2), "compile_s": round(time.perf_counter() - began, 2),
                      "knowledge_s": manifest.stats["seconds"]["knowledge"],
                      "provenance_s": manifest.stats["seconds"]["provenance"]})
    out["compile_cost"] = costs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rwku-targets", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    settings = Settings()
    model = settings.resolved_model_path()
    ctx = CompileContext(policies_dir=Path(tempfile.mkdtemp(prefix="knowledge-")), indexes_dir=Path("indexes"),
                         model_dir=model, served_model_name="bench", tokenizer=AutoTokenizer.from_pretrained(model),
                         max_document_bytes=64 << 20)
    warm_caches(ctx)
    result = {"rwku": rwku(ctx, args.rwku_targets, args.seed), "harry_potter": harry_potter(ctx),
              "command": f"python -m bench.knowledge --rwku-targets {args.rwku_targets}"}
    for name, part in (("RWKU", result["rwku"]), ("Harry Potter", result["harry_potter"])):
        arms = list(part["arms"])
        rows = [[f"recall: {k}", *[f"{part['arms'][a]['recall'][k]:.3f}" for a in arms]]
                for k in part["arms"][arms[0]]["recall"]]
        rows += [[f"false positive: {k}", *[f"{part['arms'][a]['false_positive'][k]:.3f}" for a in arms]]
                 for k in part["arms"][arms[0]]["false_positive"] if not k.endswith("examples")]
        print_table(f"{name}: caught by the prompt classifier", ["set", *arms], rows)
    print_table("compile cost (Harry Potter policy + fan-wiki text)", ["MB", "compile s", "mining s", "provenance s"],
                [[c["mb"], c["compile_s"], c["knowledge_s"], c["provenance_s"]]
                 for c in result["harry_potter"]["compile_cost"]])
    write_json("knowledge", result)


if __name__ == "__main__":
    main()
