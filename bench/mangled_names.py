"""Mangled names (issue #24): TOFU forget05 questions whose author name is mangled beyond a typo (30-60% of its
letters replaced, swapped or dropped; places and dates mangled too: `perturb.mangle_question`, seeded), against
the forget05 authors' policies (name + their 20 answers as facts, as the probes suite builds them), with the
prompt classifier the server runs (offline: no engine). Recall on the mangled questions; false positives on TOFU
retain questions (other fictitious authors, the first 400), holdout05 questions (authors no one trained on),
real authors and world facts; with the unknown-name evidence off (the default) and at several
`strength.mangled_names` ratios.

    .venv/bin/python -m bench.mangled_names [--seed 0] [--draws 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from rapidfuzz import fuzz

from bench.common import print_table, write_json
from guard_service.compiler.compile import CompileContext, compile_version, warm_caches
from guard_service.config import Settings
from guard_service.evaluation import datasets, perturb
from guard_service.frontend.classifier import classify_batch
from guard_service.frontend.registry import load_policy
from guard_service.policy.request import UnlearningRequest


def policies(ctx: CompileContext, authors: list[tuple[str, list[dict]]], ratio: int | None) -> list:
    """The forget05 authors' policies with `strength.mangled_names` = `ratio` (compiled once, loaded per ratio)."""
    out = []
    for i, (name, rows) in enumerate(authors):
        spec = UnlearningRequest(target=name, kind="entity", facts=[r["answer"] for r in rows], action="refuse",
                                 strength={"mangled_names": ratio})
        path = ctx.policies_dir / f"pol_t{i:02d}" / "v1"
        if not path.is_dir():
            asyncio.run(compile_version(ctx, f"pol_t{i:02d}", 1, spec, [], False))
        out.append(load_policy(f"pol_t{i:02d}", 1, path, spec.model_dump(mode="json")))
    return out


def rate(prompts: list[str], active: list) -> tuple[float, list[str]]:
    found = classify_batch([[p] for p in prompts], active)
    hits = [p for p, c in zip(prompts, found, strict=True) if c.matches]
    return len(hits) / max(1, len(prompts)), hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=2, help="mangled versions of each question")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    data = datasets.DEFAULT_DATA
    model = Settings().resolved_model_path()
    ctx = CompileContext(policies_dir=Path(tempfile.mkdtemp(prefix="mangled-")), indexes_dir=Path("indexes"),
                         model_dir=model, served_model_name="bench", tokenizer=AutoTokenizer.from_pretrained(model))
    warm_caches(ctx)
    authors = datasets.tofu_authors(datasets.tofu(data, datasets.TOFU_FORGET_SPLIT))
    rng = random.Random(args.seed)
    mangled, unnamed = [], 0
    for name, rows in authors:
        for r in rows:
            for _ in range(args.draws):
                q = perturb.mangle_question(r["question"], name, rng)
                if q is None:
                    unnamed += 1
                    break
                mangled.append(q)
    negatives = {
        "TOFU retain (400)": [r["question"] for r in datasets.tofu(data, datasets.TOFU_RETAIN_SPLIT)[:400]],
        "TOFU holdout05": [r["question"] for r in datasets.tofu(data, "holdout05.json")],
        "TOFU real authors": [r["question"] for r in datasets.tofu(data, "real_authors.json")],
        "TOFU world facts": [r["question"] for r in datasets.tofu(data, "world_facts.json")],
    }
    out: dict = {"mangled_questions": len(mangled), "questions_naming_no_one": unnamed, "arms": {}}
    arms = {"off (the default)": None, **{f"mangled_names {r}": r for r in (50, 55, 58, 62, 66, 70)}}
    for arm, ratio in arms.items():
        active = policies(ctx, authors, ratio)
        began = time.perf_counter()
        recall, hits = rate(mangled, active)
        fp = {k: rate(v, active) for k, v in negatives.items()}
        out["arms"][arm] = {"min_ratio": ratio, "recall": recall,
                            "missed_examples": [m for m in mangled if m not in set(hits)][:8],
                            "false_positive": {k: v[0] for k, v in fp.items()},
                            "false_positive_examples": {k: v[1][:5] for k, v in fp.items()},
                            "seconds": round(time.perf_counter() - began, 1)}
    # Letter similarity alone: a mangled name to its target, and every other TOFU author's name to the nearest
    # forget05 author (the collateral a threshold on it risks).
    forget = [name for name, _ in authors]
    others = {name for name, _ in datasets.tofu_authors(datasets.tofu(data, "full.json"))} - set(forget)
    sim = {"mangled name to its target": [fuzz.ratio(" ".join(perturb.mangle_word(w, rng, rng.uniform(0.3, 0.6))
                                                                 for w in n.split()).casefold(), n.casefold())
                                          for n in forget for _ in range(20)],
           "other TOFU authors to the nearest target": [max(fuzz.ratio(o.casefold(), n.casefold()) for n in forget)
                                                        for o in sorted(others)]}
    out["letter_similarity_percentiles_5_50_95"] = {k: [round(float(x), 1) for x in np.percentile(v, [5, 50, 95])]
                                                    for k, v in sim.items()}
    print_table("letter similarity (rapidfuzz ratio)", ["pair", "5th pct", "median", "95th pct", "n"],
                [[k, *out["letter_similarity_percentiles_5_50_95"][k], len(v)] for k, v in sim.items()])
    out["command"] = f"python -m bench.mangled_names --seed {args.seed} --draws {args.draws}"
    arms = list(out["arms"])
    rows = [["recall: mangled forget05 questions", *[f"{out['arms'][a]['recall']:.3f}" for a in arms]]]
    rows += [[f"false positive: {k}", *[f"{out['arms'][a]['false_positive'][k]:.3f}" for a in arms]]
             for k in negatives]
    print_table(f"TOFU forget05, {len(mangled)} mangled questions, by strength.mangled_names", ["set", *arms], rows)
    write_json("mangled_names", out)


if __name__ == "__main__":
    main()
