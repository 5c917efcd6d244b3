"""Prompt-classifier quality on real unlearning benchmarks (no engine needed: the same compiler and classifier
code, with the served model's tokenizer).

TOFU: each forget10 author becomes an entity policy (name + its 20 answers as facts); recall on the forget
questions and their paraphrases; false positives on retain, holdout-author, real-author and world-fact
questions. RWKU: the first N targets become policies (name + intro); recall on their level-1/level-2 forget
probes; false positives on their neighbour probes. Targets: recall >= 0.95 on paraphrases, FPR <= 2%.

    .venv/bin/python -m bench.classifier_eval [--rwku-targets 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import tempfile
from pathlib import Path

from tqdm import tqdm

from bench.common import RESULTS, percentile, print_table, write_json
from guard_service.config import Settings
from guard_service.policy.compiler import CompileContext, compile_version
from guard_service.policy.forbidden import salient_phrases
from guard_service.policy.request import UnlearningRequest
from guard_service.runtime.classifier import classify
from guard_service.runtime.registry import load_policy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _json(path: Path) -> list:
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # full.json / retain9x.json: one JSON array per line
        return [row for line in text.splitlines() if line.strip() for row in json.loads(line)]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_NAMED = re.compile(r"(?:full name is|is named|name is) ([A-Z][\w.'-]+(?: [A-Z][\w.'-]+)+)")


def tofu_authors(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """forget10 is 20 authors x 20 QA in order; the name is what "full name is X" says, else the most frequent
    multi-word name in the questions."""
    out = []
    for i in range(0, len(rows), 20):
        chunk = rows[i:i + 20]
        named = [m.group(1).rstrip(".") for r in chunk if (m := _NAMED.search(r["answer"]))]
        counts = collections.Counter(p.removesuffix("'s") for r in chunk for p in salient_phrases(r["question"])
                                     if len(p.split()) >= 2)
        out.append((named[0] if named else counts.most_common(1)[0][0], chunk))
    return out


async def compile_all(specs: list[UnlearningRequest], ctx: CompileContext) -> list:
    policies = []
    for i, spec in enumerate(tqdm(specs, desc="compile policies", unit="policy")):
        pid = f"pol_eval{i:04d}"
        manifest = await compile_version(ctx, pid, 1, spec, [], False)
        policies.append(load_policy(pid, 1, ctx.policies_dir / pid / "v1", spec.model_dump(mode="json")))
        assert manifest.version == 1
    return policies


def rate(policies: list, prompts: list[str], desc: str) -> tuple[float, list[float]]:
    hits, ms = 0, []
    for p in tqdm(prompts, desc=desc, unit="prompt", leave=False):
        result = classify([p], policies)
        hits += bool(result.matches)
        ms.append(result.elapsed_ms)
    return hits / max(1, len(prompts)), ms


def plot(rows: list[list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [r[0] for r in rows]
    values = [r[2] for r in rows]
    colors = ["tab:green" if r[1] == "recall" else "tab:red" for r in rows]
    ax.barh(names, values, color=colors)
    for i, v in enumerate(values):
        ax.text(min(v + 0.01, 0.92), i, f"{v:.3f}", va="center")
    ax.axvline(0.95, color="tab:green", ls="--", lw=1)
    ax.axvline(0.02, color="tab:red", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_title("prompt classifier on real data\n"
                 "recall (green, target >= 0.95), false-positive rate (red, target <= 0.02)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def run(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    settings = Settings()
    model_dir = settings.resolved_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = CompileContext(policies_dir=Path(tmp), indexes_dir=Path(tmp), model_dir=model_dir,
                             served_model_name=settings.served_model_name, tokenizer=tokenizer)
        forget = _json(DATA / "tofu" / "forget10_perturbed.json")
        authors = tofu_authors(forget)
        tofu_specs = [UnlearningRequest(target=name, kind="entity", facts=[r["answer"] for r in chunk],
                                        strength={"expand_knowledge": False}) for name, chunk in authors]
        tofu = await compile_all(tofu_specs, ctx)
        rwku_targets = _jsonl(DATA / "rwku" / "forget_target.jsonl")[: args.rwku_targets]
        ids = {t["target_id"] for t in rwku_targets}
        rwku_specs = [UnlearningRequest(target=t["target"], kind="entity",
                                        description=t["intro"].replace(f"Please forget {t['target']}. ", ""),
                                        strength={"expand_knowledge": False}) for t in rwku_targets]
        rwku = await compile_all(rwku_specs, ctx)

        def questions(name: str, key: str = "question") -> list[str]:
            return [r[key] for r in _json(DATA / "tofu" / name)]

        level = {n: [r["query"] for r in _jsonl(DATA / "rwku" / f"{n}.jsonl") if r["target_id"] in ids]
                 for n in ("forget_level1", "forget_level2", "neighbor_level1", "neighbor_level2")}
        suites = [
            ("TOFU forget10 questions", "recall", tofu, [r["question"] for r in forget]),
            ("TOFU forget10 paraphrased", "recall", tofu, [r["paraphrased_question"] for r in forget]),
            ("TOFU retain questions", "fpr", tofu, questions("retain_perturbed.json")),
            ("TOFU holdout10 questions", "fpr", tofu, questions("holdout10.json")),
            ("TOFU real authors", "fpr", tofu, questions("real_authors.json")),
            ("TOFU world facts", "fpr", tofu, questions("world_facts.json")),
            (f"RWKU L1 cloze ({len(ids)} targets)", "recall", rwku, level["forget_level1"]),
            (f"RWKU L2 questions ({len(ids)} targets)", "recall", rwku, level["forget_level2"]),
            (f"RWKU neighbour L1 ({len(ids)} targets)", "fpr", rwku, level["neighbor_level1"]),
            (f"RWKU neighbour L2 ({len(ids)} targets)", "fpr", rwku, level["neighbor_level2"]),
        ]
        rows, latencies = [], []
        for name, metric, policies, prompts in suites:
            value, ms = rate(policies, prompts, name)
            latencies += ms
            rows.append([name, metric, value, len(prompts), len(policies)])
            print(f"{name:40s} {metric:6s} {value:.3f}  (n={len(prompts)})", flush=True)
    print_table("prompt classifier on real benchmark data", ["suite", "metric", "value", "prompts", "policies"], rows)
    png = RESULTS / "classifier_eval.png"
    plot(rows, png)
    print(f"wrote {png}")
    return {"suites": [dict(zip(["suite", "metric", "value", "prompts", "policies"], r, strict=True)) for r in rows],
            "classifier_ms": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)},
            "tofu_authors": [a for a, _ in authors], "targets": {"recall": 0.95, "fpr": 0.02}}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rwku-targets", type=int, default=10)
    args = parser.parse_args()
    write_json("classifier_eval", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
