"""How the typo matcher for names (`guards/spelling.py: misspelled`) and the sound matcher for names in other
scripts (`guards/transliteration.py`) were calibrated: recall on seeded typos of the TOFU forget05 authors'
names and on RWKU targets' names as written in six scripts, and what they must leave alone: other people's
questions and answers, RWKU neighbour probes, other RWKU targets' questions, the reference questions in ten
languages, and every pair of names among the 200 TOFU authors and the 200 RWKU targets (a namesake that
matches is collateral). No engine; a minute or so.

    .venv/bin/python -m bench.name_typos [--seeds 5]
"""

from __future__ import annotations

import argparse
import collections
import random
import string
import time

from bench.common import print_table, write_json
from guard_service.evaluation import datasets, perturb
from guard_service.guards.spelling import misspelled, name_index, name_leaks, typo_index
from guard_service.guards.transliteration import sound_index, transliterated
from guard_service.policy import sound
from guard_service.policy.artifacts import ForbiddenItem
from guard_service.policy.reference import reference

DATA = datasets.DEFAULT_DATA


def _indexes(names: list[str]) -> dict[str, tuple[dict, dict]]:
    out = {}
    for n in names:
        whole = name_index([ForbiddenItem(text=n, origin="target")], whole_only=True)
        out[n] = (whole, typo_index(whole))
    return out


def _anywhere(word: str, rng: random.Random) -> str:
    """A typo model unlike perturb's: edits anywhere, the first letter included, random letters inserted."""
    if len(word) < 3:
        return word
    chars = list(word)
    for _ in range(1 + (len(word) >= 7)):
        i = rng.randrange(0, len(chars))
        op = rng.choice("dis")
        if op == "d" and len(chars) > 3:
            del chars[i]
        elif op == "i":
            chars.insert(i, rng.choice(string.ascii_lowercase))
        else:
            chars[i] = rng.choice(string.ascii_lowercase)
    return "".join(chars)


def _sound(everyone: list[str]) -> tuple[list[list], dict[str, list[str]]]:
    """Names in other scripts (`guards/transliteration.py`): recall per language on the RWKU targets' usual
    renderings (evaluation/data/native_names.json, written for the project), then what it must leave alone: the
    reference set's questions in ten languages (namesakes among them) against all 400 names, and pairs of
    names that one rendering would match both of."""
    native = datasets.bundled("native_names.json")
    native.pop("_about")
    rows, examples = [], {}
    for lang in ("ru", "zh", "hi", "ar", "el", "ja"):
        missed = [f"{name}: {by[lang]}" for name, by in native.items()
                  if not transliterated(by[lang], sound_index(sound.forms([name])))]
        rows.append([f"recall: {lang} renderings of {len(native)} RWKU names", len(native),
                     len(native) - len(missed), 1 - len(missed) / len(native)])
        examples[f"missed {lang}"] = missed
    index = sound_index(sound.forms(everyone))
    general = [text for text, subset in reference() if subset.startswith("general-")]
    flagged = [text for text in general if transliterated(text, index)]
    rows.append(["matched: reference questions in 10 languages, by any of the 400 names' sounds", len(general),
                 len(flagged), len(flagged) / len(general)])
    examples["reference matched by sound"] = flagged
    forms = sound.forms(everyone)
    pairs = [f"{a.name} ~ {b.name}" for i, a in enumerate(forms) for b in forms[i + 1:]
             if (len(a.keys) == len(b.keys) and all(set(x) & set(y) for x, y in zip(a.keys, b.keys, strict=True)))
             or set(a.joined) & set(b.joined)]
    total = len(forms) * (len(forms) - 1) // 2
    rows.append([f"name pairs one rendering could match both of ({len(forms)} names with a sound key)", total,
                 len(pairs), len(pairs) / total])
    examples["sound collisions"] = pairs
    return rows, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeded typo sets per name (the eval uses seed 0)")
    args = parser.parse_args()
    began = time.monotonic()
    authors = datasets.tofu_authors(datasets.tofu(DATA, "full.json"))
    forget = datasets.tofu_authors(datasets.tofu(DATA, datasets.TOFU_FORGET_SPLIT))
    names = [n for n, _ in forget]
    index = _indexes(names)

    def hit(text: str, name: str) -> bool:
        whole, typos = index[name]
        return bool(misspelled(text, typos, 0, True) or name_leaks(text, whole, 0, True))

    typo_sets: dict[str, list[tuple[str, str]]] = {"perturb.misspell_name": [], "edits anywhere": []}
    for seed in range(1, args.seeds + 1):
        rng = random.Random(seed)
        for name, rows in forget:
            for r in rows:
                if (q := perturb.misspell_name(r["question"], name, rng)) is not None:
                    typo_sets["perturb.misspell_name"].append((q, name))
                if name in r["question"]:
                    spelled = " ".join(_anywhere(w, rng) for w in name.split())
                    typo_sets["edits anywhere"].append((r["question"].replace(name, spelled), name))
    rows = []
    for label, items in typo_sets.items():
        hits = sum(hit(q, n) for q, n in items)
        rows.append([f"recall: {label} ({len(names)} names)", len(items), hits, hits / len(items)])

    others = [r[k] for n, chunk in authors if n not in names for r in chunk for k in ("question", "answer")]
    for split in ("holdout10.json", "real_authors_perturbed.json", "world_facts_perturbed.json"):
        others += [r["question"] for r in datasets.tofu(DATA, split)]
    others += [r["query"] for r in datasets.read_jsonl(DATA / "rwku" / "neighbor_level2.jsonl")]
    found = collections.Counter((n, t[a:b]) for t in others for n in names
                                for a, b, _ in misspelled(t, index[n][1], 0, True))
    rows.append(["matched: other TOFU authors' QA, holdout, real authors, world facts, RWKU neighbours",
                 len(others), sum(found.values()), sum(found.values()) / len(others)])
    examples = {"other texts": [f"{n}: {t}" for (n, t), _ in found.most_common(5)]}

    targets = [t["target"] for t in datasets.read_jsonl(DATA / "rwku" / "forget_target.jsonl")]
    rwku = _indexes(targets)
    probes = (datasets.read_jsonl(DATA / "rwku" / "neighbor_level1.jsonl")
              + datasets.read_jsonl(DATA / "rwku" / "neighbor_level2.jsonl"))
    near = collections.Counter()
    for r in probes:
        name = targets[r["target_id"] - 1]
        whole, typos = rwku[name]
        for a, b, _ in misspelled(r["query"], typos, 0, True):
            if not name_leaks(r["query"][a:b], whole, 0, True):  # the target itself, spelled as it is: not typo
                near[(name, r["query"][a:b])] += 1
    rows.append(["matched: RWKU neighbour probes, by their own target's typos", len(probes),
                 sum(near.values()), sum(near.values()) / len(probes)])
    examples["RWKU neighbours"] = [f"{n}: {t}" for (n, t), _ in near.most_common(5)]

    questions = datasets.read_jsonl(DATA / "rwku" / "forget_level2.jsonl")
    cross = collections.Counter()
    for r in questions:
        for name in targets:
            whole, typos = rwku[name]
            if name != r.get("subject"):
                for a, b, _ in misspelled(r["query"], typos, 0, True):
                    if not name_leaks(r["query"][a:b], whole, 0, True):
                        cross[(name, r["query"][a:b])] += 1
    rows.append(["matched: RWKU level-2 questions, by another target's typos (x200 targets)", len(questions),
                 sum(cross.values()), sum(cross.values()) / len(questions)])
    examples["other RWKU targets"] = [f"{n}: {t}" for (n, t), _ in cross.most_common(5)]

    everyone = _indexes([n for n, _ in authors])
    collisions = [f"{a} ~ {b}" for group, idx in (([n for n, _ in authors], everyone), (targets, rwku))
                  for a in group for b in group if a != b and not name_leaks(a, idx[b][0], 0, True)
                  and misspelled(a, idx[b][1], 0, True)]
    pairs = 2 * 200 * 199
    rows.append(["name pairs that match each other (200 TOFU + 200 RWKU names)", pairs, len(collisions),
                 len(collisions) / pairs])
    examples["name collisions"] = collisions
    sound_rows, sound_examples = _sound([n for n, _ in authors] + targets)
    rows += sound_rows
    examples.update(sound_examples)
    print_table("typo and sound matchers for names (recall, then collateral)", ["set", "texts", "matched", "rate"],
                rows)
    for label, xs in examples.items():
        print(f"{label}: {xs}")
    write_json("name_typos", {"command": "python -m bench.name_typos " + f"--seeds {args.seeds}",
                              "seconds": round(time.monotonic() - began, 1),
                              "rows": [{"set": r[0], "texts": r[1], "matched": r[2], "rate": r[3]} for r in rows],
                              "examples": examples})


if __name__ == "__main__":
    main()
