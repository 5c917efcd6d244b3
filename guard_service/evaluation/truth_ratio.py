"""TOFU's truth ratio and forget quality for the fixture models themselves (teacher-forced, in-process).

These measure what a model *knows*, which a generation-time guard leaves untouched by design: they show that
the fixture really learned the forget set (forget quality far below the retain-only twin's 1.0) — the
precondition for the guard's leakage numbers to mean anything.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from guard_service.evaluation import datasets, scoring
from guard_service.evaluation.datasets import TOFU_FORGET_SPLIT
from guard_service.serving.prompts import chat_token_ids


def answer_logprobs(model_dir: Path, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[tuple[float, int]]:
    """Sum of log P(answer tokens | chat-formatted question), and the answer's token count, per pair."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    encoded = []
    for question, answer in pairs:
        prompt = chat_token_ids(tokenizer, [{"role": "user", "content": question}])
        encoded.append((prompt, tokenizer.encode(answer, add_special_tokens=False)))
    out = []
    for i in tqdm(range(0, len(encoded), batch_size), desc=f"truth ratio {model_dir.name}", unit="batch"):
        chunk = encoded[i:i + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (p, a) in enumerate(chunk):
            ids[row, :len(p) + len(a)] = torch.tensor(p + a)
            mask[row, :len(p) + len(a)] = 1
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, (p, a) in enumerate(chunk):
            positions = torch.arange(len(p) - 1, len(p) + len(a) - 1)
            total = logprobs[row, positions, torch.tensor(a)].sum().item()
            out.append((total, len(a)))
    return out


def truth_ratios(model_dir: Path, rows: list[dict]) -> list[float]:
    pairs = []
    for r in rows:
        pairs.append((r["question"], r["paraphrased_answer"]))
        pairs += [(r["question"], wrong) for wrong in r["perturbed_answer"]]
    scored = answer_logprobs(model_dir, pairs)
    ratios, k = [], 0
    for r in rows:
        n = 1 + len(r["perturbed_answer"])
        right, wrong = scored[k], scored[k + 1:k + n]
        ratios.append(scoring.truth_ratio(right[0], right[1], wrong))
        k += n
    return ratios


def fixture_report(data: Path, models: dict[str, Path], reference: str, limit: int | None = None) -> dict:
    """Truth ratios on the forget set for each model and forget quality against the `reference` model's."""
    rows = datasets.tofu(data, TOFU_FORGET_SPLIT)[:limit]
    ratios = {name: truth_ratios(path, rows) for name, path in models.items()}
    return {name: {"mean_truth_ratio": sum(r) / len(r),
                   "forget_quality_vs_" + reference: scoring.forget_quality(r, ratios[reference])}
            for name, r in ratios.items()}
