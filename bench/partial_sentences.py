"""Partial sentences against facts (issue #26): where hold mode starts holding a sentence (`leak.NEAR_SIM`).

The output guard releases an open sentence's words as they come until its words so far come within `NEAR_SIM` of
a fact, then holds the rest until the sentence is judged whole. This measures, at several thresholds, how much of
a sentence that *is* a leak went out before the hold, and how much of a benign sentence is held needlessly:
    leaks   TOFU forget05 paraphrased answers, each against the 200 forget05 answers as facts (its own among them;
            a server with 200 such facts is one with ten authors' policies); only those judged a leak at their
            end (full sentence >= FACT_MIN_SIM) count
    benign  TOFU retain (other fictitious authors), real-author and world-fact answers against the same facts
Prefixes are weighed as the guard weighs them (at words rarer than "the", "in", "and", every one near `NEAR_SIM`
and less often further from it: `leak.weigh_every`; the open word excluded; the embedder the guard runs). It also
prints how far one more rare word moves a prefix's score (p50/p90/p99), the step `leak.WEIGH_MARGIN` is set by.

    .venv/bin/python -m bench.partial_sentences [--limit 200] [--every-word]
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from bench.common import print_table, write_json
from guard_service.embedding import embed
from guard_service.evaluation import datasets
from guard_service.guards.leak import FACT_MIN_SIM, NEAR_SIM, UNWEIGHED_ZIPF, weigh_every
from guard_service.policy.knowledge import general_zipf

THRESHOLDS = (0.35, 0.40, 0.45, 0.50, 0.55, 0.60)


def prefix_sims(sentences: list[str], facts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sentence, the best fact similarity of each prefix of 1..n words (the last: the whole sentence), and
    which prefixes the guard weighs: those ending in a word rarer than `UNWEIGHED_ZIPF` (frequent words wait for
    the next rarer one and are weighed with it)."""
    words = [re.findall(r"\S+", s) for s in sentences]
    texts = [" ".join(w[:k]) for w in words for k in range(1, len(w) + 1)]
    best = (embed(texts) @ facts.T).max(axis=1)
    out, at = [], 0
    for w in words:
        out.append((best[at:at + len(w)], np.array([general_zipf(x.casefold()) < UNWEIGHED_ZIPF for x in w])))
        at += len(w)
    return out


def released_before_hold(sims: np.ndarray, rare: np.ndarray, t: float,
                         every: bool = False) -> tuple[float, int, bool]:
    """The fraction of a sentence's words released before the hold, how many times it was weighed and whether it
    came near (was held), as the
    guard does it: when the open word is word m+1, words 1..m are weighed if enough rare words came since the last
    weighing (`leak.weigh_every` of its score; at once, the first time); the first weighing within `t` holds
    from there. Words since a far weighing went out on its score; the last word never goes out before the
    sentence is judged whole. `every`: weighed at every rare word (what `weigh_every` saves)."""
    n, released, score, waiting, weighs = len(sims), 0, None, 0, 0
    for m in range(n - 1):
        waiting += int(rare[m])
        if waiting >= (1 if score is None or every else weigh_every(score, t)):
            weighs, waiting, score = weighs + 1, 0, float(sims[m])
            if score >= t:
                return released / n, weighs, True
            released = m + 1
        elif score is not None:
            released = m + 1
    return released / n, weighs, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help="sentences per set")
    parser.add_argument("--every-word", action="store_true", help="weigh at every rare word (not `weigh_every`)")
    args = parser.parse_args()
    data = datasets.DEFAULT_DATA
    forget = datasets.tofu(data, "forget05_perturbed.json")
    facts = embed([r["answer"] for r in forget])
    leaks = [r["paraphrased_answer"] for r in forget][:args.limit]
    benign = [r["answer"] for name in ("retain_perturbed.json", "real_authors.json", "world_facts.json")
              for r in datasets.tofu(data, name)[:args.limit]]
    leak_sims, benign_sims = prefix_sims(leaks, facts), prefix_sims(benign, facts)
    judged = [s for s in leak_sims if s[0][-1] >= FACT_MIN_SIM]
    # what `weigh_every` bets on: how far one more rare word moves a partial sentence's score
    rises = np.concatenate([np.diff(s[w]) for s, w in leak_sims + benign_sims if w.sum() > 1])
    rise = {f"p{q}": float(np.percentile(rises, q)) for q in (50, 90, 99)}
    rows = []
    for t in THRESHOLDS:
        out_before = [released_before_hold(s, w, t, args.every_word)[0] for s, w in judged]
        # the last word of every sentence waits for its end whatever the threshold: what the threshold adds
        passed = [released_before_hold(s, w, t, args.every_word) for s, w in benign_sims]
        held = [(len(s) - 1) / len(s) - out for (s, _), (out, _, _) in zip(benign_sims, passed, strict=True)]
        touched = [near for _, _, near in passed]
        weighs = sum(k for _, k, _ in passed) / sum(len(s) - 1 for s, _ in benign_sims)
        rows.append({"near_sim": t, "leak_released_mean": float(np.mean(out_before)),
                     "leak_released_p90": float(np.percentile(out_before, 90)),
                     "benign_held_mean": float(np.mean(held)), "benign_touched": float(np.mean(touched)),
                     "benign_weighed_per_word": weighs})
    print_table(f"partial sentences: {len(judged)}/{len(leaks)} leaks judged at their end, {len(benign)} benign; "
                f"shipped NEAR_SIM {NEAR_SIM}", ["NEAR_SIM", "leak words out before hold (mean)", "p90",
                                                 "benign words held beyond the last (mean)",
                                                 "benign sentences held", "benign weighings per word"],
                [[r["near_sim"], r["leak_released_mean"], r["leak_released_p90"], r["benign_held_mean"],
                  r["benign_touched"], r["benign_weighed_per_word"]] for r in rows])
    print(f"score change from one rare word to the next ({len(rises)} steps): "
          + ", ".join(f"{k} {v:+.3f}" for k, v in rise.items()))
    write_json("partial_sentences" + ("_every_word" if args.every_word else ""),
               {"args": vars(args), "near_sim": NEAR_SIM, "leaks": len(leaks), "judged": len(judged),
                "benign": len(benign), "rare_word_score_change": rise, "rows": rows})


if __name__ == "__main__":
    main()
