"""The literature's scores, computed the way its benchmarks compute them."""

from __future__ import annotations

import functools
import math
import re
import statistics

_SQUASH = re.compile(r"[^0-9a-z]")


@functools.cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """TOFU's answer score and MUSE's KnowMem: how much of the reference the answer reproduces."""
    return _scorer().score(reference, prediction)["rougeL"].recall


def rouge_l_f1(prediction: str, reference: str) -> float:
    """MUSE's VerbMem: continuation against the true continuation."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


def mentions(text: str, strings: list[str]) -> list[str]:
    """Forbidden strings present in `text`, in any casing or spacing ("J. K. ROWLING" counts)."""
    squashed = _SQUASH.sub("", text.casefold())
    return [s for s in strings if (k := _SQUASH.sub("", s.casefold())) and k in squashed]


def truth_ratio(paraphrased_logprob: float, paraphrased_len: int, perturbed: list[tuple[float, int]]) -> float:
    """TOFU's R_truth: mean length-normalised probability of the wrong answers over that of the right one
    (a paraphrase of it). Low means the model prefers the truth; near 1 means it cannot tell."""
    wrong = statistics.fmean(lp / max(1, n) for lp, n in perturbed)
    right = paraphrased_logprob / max(1, paraphrased_len)
    return math.exp(wrong - right)


def forget_quality(truth_ratios: list[float], reference_truth_ratios: list[float]) -> float:
    """TOFU's forget quality: p-value of the two-sample KS test between a model's truth ratios on the forget set
    and a never-trained-on-it (retain-only) model's. High means indistinguishable from never having learned."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(truth_ratios, reference_truth_ratios).pvalue)


def harmonic_mean(values: list[float]) -> float:
    return statistics.harmonic_mean(values) if values and min(values) > 0 else 0.0


def ratio(numerator: float, denominator: float) -> float | None:
    """None where the reference is zero: a ratio against nothing measured is not a result."""
    return numerator / denominator if denominator > 0 else None


def rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0
