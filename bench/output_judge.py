"""What the output guard's judgement costs (issue #26): hold mode (`GUARD_OUTPUT_MODE=hold`) over S concurrent
streams and N applicable `act` policies, in process, without the engine: the real `OutputGuard` fed the real
tokenizer's deltas of benign answers (a lighthouse story, how bread rises, a recipe), every stream's delta of one
step judged concurrently (sentence embeddings share batches across streams, as in the server).

Policies: Harry Potter (names) and Leonardo da Vinci (a fact) compiled as the server compiles them, plus N-2
synthetic people (a seeded two-word name and one fact each) whose leak-scanner parts are built by the same
functions `LeakDetector.load` calls (compiling 10,000 here would take most of an hour).

Per (N, S): guard time per delta and per stream-step (the wall time of a step divided by its deltas: what the
judge adds to each token on this 2-core CPU), the share of deltas held at least one step, and how far the released
text trails the generated text on average (characters), against the engine's own time per step at the same S
(the sweep's inter-token p50: about 60 ms at 1 stream, 90 ms at 16, 300 ms at 64 here). "build ms": building the
scanners' state over all N policies at once, which the registry does in its reload thread after a change (it was
done on the first delta of the first stream after it, on the event loop).

    .venv/bin/python -m bench.output_judge [--policies 1 100 10000] [--streams 1 16 64] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import tempfile
import time
from pathlib import Path

from bench.common import compile_policies, print_table, token_deltas, write_json
from guard_service.config import Settings
from guard_service.embedding import EMBEDDINGS
from guard_service.frontend.decision import GuardDecision, Verdict
from guard_service.frontend.output_guard import OutputGuard
from guard_service.frontend.registry import ActivePolicy
from guard_service.guards.leak import LeakDetector, _combined, leak_pattern
from guard_service.guards.spelling import name_index, squash, typo_index
from guard_service.policy.artifacts import ForbiddenItem
from guard_service.policy.request import UnlearningRequest
from guard_service.protocol import GuardArgs, PolicyKey
from guard_service.serving.generation import ChoiceDelta

ANSWERS = [
    "The lighthouse keeper climbed the stairs every evening to light the lamp. Ships passing in the night saw it "
    "from miles away and steered clear of the rocks. In winter the storms were fierce, and he wrote in his log "
    "by candlelight while the wind howled around the tower.",
    "Bread rises because yeast eats the sugars in the dough and gives off carbon dioxide, which is trapped by the "
    "gluten. A warm kitchen speeds it up, and a second rise gives a finer crumb. Bake it once it has doubled.",
    "To make a simple tomato soup, soften an onion in butter, add chopped tomatoes and a little stock, and simmer "
    "for twenty minutes. Blend it smooth, season with salt and pepper, and serve it with warm bread.",
]
FIRST = ["Amara", "Bogdan", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kavya", "Lars",
         "Mina", "Nikolai", "Olga", "Pavel", "Quentin", "Rosa", "Sven", "Tamar", "Umar", "Vera", "Wendell", "Ximena"]
LAST = ["Abernathy", "Brennan", "Castellano", "Dragomir", "Eriksen", "Fontaine", "Gallagher", "Halvorsen",
        "Ivanova", "Jablonski", "Kowalczyk", "Lindqvist", "Moreau", "Nakamura", "Okonkwo", "Petrakis", "Quinlan",
        "Rasmussen", "Sokolov", "Thibodeaux", "Uribe", "Valdivia", "Wojcik", "Yamazaki"]


def synthetic(template: ActivePolicy, n: int, seed: int = 0) -> list[ActivePolicy]:
    """N people with a name and a fact each; their leak-scanner part made as `LeakDetector.load` makes one."""
    rng = random.Random(seed)
    names = {f"{rng.choice(FIRST)} {rng.choice(LAST)}{'' if i < 400 else f'-{i}'}" for i in range(n)}
    while len(names) < n:
        names.add(f"{rng.choice(FIRST)} {rng.choice(LAST)}-{rng.randrange(10**6)}")
    names = sorted(names)[:n]
    facts = [f"{name} was born in Town {i} and worked there as a pharmacist." for i, name in enumerate(names)]
    vectors = EMBEDDINGS.get(facts)
    base = template.parts[LeakDetector.name]
    out = []
    for i, (name, fact) in enumerate(zip(names, facts, strict=True)):
        index = name_index([ForbiddenItem(text=name, origin="target")], whole_only=True)
        part = dataclasses.replace(base, pattern=leak_pattern([name]), whole=frozenset({name.casefold()}),
                                   names=index, typos=typo_index(index), sounds=(), phrases=frozenset({squash(name)}),
                                   fact_vectors=vectors[i:i + 1],
                                   retain_vectors=vectors[:0])
        spec = template.spec.model_copy(update={"target": name, "aliases": [], "facts": [fact]})
        out.append(ActivePolicy(PolicyKey(f"pol_s{i:06d}", 1), spec, template.artifact, {LeakDetector.name: part}))
    return out


async def run(policies: list[ActivePolicy], streams: list[list[str]]) -> dict:
    s = len(streams)  # one prompt per stream
    guard = OutputGuard([GuardDecision(Verdict.passed)] * s, policies, 1, [""] * s, [GuardArgs()] * s)
    steps = max(len(s) for s in streams)
    generated, released = [0] * len(streams), [0] * len(streams)
    lag, held, count, wall = 0.0, 0, 0, 0.0
    for k in range(steps):
        live = [i for i, s in enumerate(streams) if k < len(s)]
        began = time.perf_counter()
        out = await asyncio.gather(*[guard.on_delta(ChoiceDelta(i, streams[i][k], [k], None, "length" if k == len(
            streams[i]) - 1 else None)) for i in live])
        wall += time.perf_counter() - began
        for i, step in zip(live, out, strict=True):
            generated[i] += len(streams[i][k])
            released[i] += len(step.emit.text) if step.emit is not None else 0
            lag += generated[i] - released[i]
            held += generated[i] > released[i]
            count += 1
    assert released == generated, "a benign stream was not released whole"
    return {"deltas": count, "ms_per_delta": 1000 * wall / count, "ms_per_step": 1000 * wall / steps,
            "held_share": held / count, "lag_chars": lag / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=int, nargs="+", default=[1, 100, 10000])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    model = Settings().resolved_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model)
    with tempfile.TemporaryDirectory() as tmp:
        specs = {"pol_hp": UnlearningRequest(target="Harry Potter", aliases=["J.K. Rowling", "Hermione Granger"],
                                             action="refuse", strength={"expand_knowledge": False}),
                 "pol_lv": UnlearningRequest(target="Leonardo da Vinci", aliases=["da Vinci"], action="refuse",
                                             facts=["Leonardo da Vinci painted the Mona Lisa."],
                                             strength={"expand_knowledge": False})}
        compiled = compile_policies(specs, model, tokenizer, Path(tmp))
        people = synthetic(compiled[1], max(args.policies))
        texts = [token_deltas(tokenizer, a)[:args.tokens] for a in ANSWERS]
        rows = []
        for n in args.policies:
            policies = (compiled + people)[:n] if n > 1 else compiled[1:]
            began = time.perf_counter()  # what the registry's reload now builds ahead of the first stream
            _combined.__wrapped__(tuple((p.key, p.parts[LeakDetector.name]) for p in policies))
            build_ms = 1000 * (time.perf_counter() - began)
            for s in args.streams:
                asyncio.run(run(policies, [texts[i % len(texts)] for i in range(min(s, 4))]))  # warm-up
                got = asyncio.run(run(policies, [texts[i % len(texts)] for i in range(s)]))
                rows.append({"policies": n, "streams": s, "build_ms": build_ms, **got})
                print(f"N={n:<6d} S={s:<3d} {got['ms_per_delta']:.2f} ms/delta", flush=True)
    print_table("hold mode's judgement, benign answers (no engine)", ["policies", "streams", "ms per delta",
                "ms per step", "deltas held", "lag (chars)", "build ms"],
                [[r["policies"], r["streams"], r["ms_per_delta"], r["ms_per_step"], r["held_share"], r["lag_chars"],
                  r["build_ms"]] for r in rows])
    write_json("output_judge", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
