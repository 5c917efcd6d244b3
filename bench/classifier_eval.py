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
import os
import tempfile
from pathlib import Path

from tqdm import tqdm

from bench.common import RESULTS, percentile, print_table, write_json
from guard_service.compiler.compile import CompileContext, compile_version
from guard_service.config import Settings
from guard_service.evaluation.datasets import DEFAULT_DATA as DATA
from guard_service.evaluation.datasets import read_json, read_jsonl, tofu_authors
from guard_service.frontend.classifier import classify
from guard_service.frontend.registry import load_policy
from guard_service.policy.request import UnlearningRequest


async def compile_all(specs: list[UnlearningRequest], ctx: CompileContext) -> list:
    policies = []
    for i, spec in enumerate(tqdm(specs, desc="compile policies", unit="policy")):
        pid = f"pol_eval{i:04d}"
        manifest = await compile_version(ctx, pid, 1, spec, [], False)
        policies.append(load_policy(pid, 1, ctx.policies_dir / pid / "v1", spec.model_dump(mode="json")))
        assert manifest.version == 1
    return policies


def rate(policies: list, prompts: list[str], desc: str) -> tuple[float, list[float], list[dict], list[dict]]:
    """Share of prompts matched, per-prompt ms, the matched prompts with their reasons, the missed ones with
    their best score."""
    hits, misses, ms = [], [], []
    for p in tqdm(prompts, desc=desc, unit="prompt", leave=False):
        result = classify([p], policies)
        if result.matches:
            hits.append({"prompt": p, "matches": {m.policy.spec.target: m.reasons for m in result.matches}})
        else:
            misses.append({"prompt": p, "best_score": max(result.scores.values(), default=0.0)})
        ms.append(result.elapsed_ms)
    return len(hits) / max(1, len(prompts)), ms, hits, misses


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
        forget = read_json(DATA / "tofu" / "forget10_perturbed.json")
        authors = tofu_authors(forget)
        tofu_specs = [UnlearningRequest(target=name, kind="entity", facts=[r["answer"] for r in chunk],
                                        strength={"expand_knowledge": False}) for name, chunk in authors]
        tofu = await compile_all(tofu_specs, ctx)
        rwku_targets = read_jsonl(DATA / "rwku" / "forget_target.jsonl")[: args.rwku_targets]
        ids = {t["target_id"] for t in rwku_targets}
        rwku_specs = [UnlearningRequest(target=t["target"], kind="entity",
                                        description=t["intro"].replace(f"Please forget {t['target']}. ", ""),
                                        strength={"expand_knowledge": False}) for t in rwku_targets]
        rwku = await compile_all(rwku_specs, ctx)

        def questions(name: str, key: str = "question") -> list[str]:
            return [r[key] for r in read_json(DATA / "tofu" / name)]

        level = {n: [r["query"] for r in read_jsonl(DATA / "rwku" / f"{n}.jsonl") if r["target_id"] in ids]
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
        rows, latencies, false_positives, misses = [], [], {}, {}
        for name, metric, policies, prompts in suites:
            value, ms, hits, missed = rate(policies, prompts, name)
            latencies += ms
            if metric == "fpr":
                false_positives[name] = hits
            else:
                misses[name] = missed
            rows.append([name, metric, value, len(prompts), len(policies)])
            print(f"{name:40s} {metric:6s} {value:.3f}  (n={len(prompts)})", flush=True)
    print_table("prompt classifier on real benchmark data", ["suite", "metric", "value", "prompts", "policies"], rows)
    png = RESULTS / "classifier_eval.png"
    plot(rows, png)
    print(f"wrote {png}")
    return {"suites": [dict(zip(["suite", "metric", "value", "prompts", "policies"], r, strict=True)) for r in rows],
            "classifier_ms": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)},
            "tofu_authors": [a for a, _ in authors], "targets": {"recall": 0.95, "fpr": 0.02},
            "false_positives": false_positives, "misses": misses}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rwku-targets", type=int, default=10)
    args = parser.parse_args()
    write_json("classifier_eval", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
