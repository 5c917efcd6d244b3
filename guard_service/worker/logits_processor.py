"""The guard inside vLLM: a V1 batch-level logits processor living in the engine's worker process.

Per request it reads `GuardArgs` (protocol.py) from `SamplingParams.extra_args`: the policy versions that steer
the row, those that only watch it, and the fail-closed marker token; the artifact root comes once, from the
engine's `additional_config`. Rows without guard args are never touched. A guarded row holds every guard
component's row guards (guards/), seeded with the prompt's last tokens so that a forbidden string or a protected
span begun in the prompt cannot be finished by the output. Each step:
    1. feed each row's guards the tokens generated since the last step (a cursor over vLLM's live output list),
    2. subtract the steering policies' dense penalties (one `index_add_` per policy combination),
    3. apply every row guard's bans: -inf on hard bans (and on every word-continuing token where a forbidden word
       must end), a soft penalty on the rest, and -inf on the marker token so only a failed row can emit it.
Nothing may raise out of `update_state`/`apply` (that kills the engine for everyone): a row whose steering
policy cannot be loaded fails closed, i.e. it is forced to emit the marker, which vLLM reports as its
`stop_reason` and the API turns into a refusal; a watch-mode policy that cannot load is skipped for that row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from guard_service.guards import COMPONENTS
from guard_service.guards.base import GuardComponent, RowGuard, WorkerContext
from guard_service.metrics import definitions as metrics
from guard_service.policy.tokenization import TokenClasses, token_classes
from guard_service.protocol import HEAP_TRIM_CONFIG_KEY, ROOT_CONFIG_KEY, GuardArgs
from guard_service.worker.heap import HeapTrimmer
from guard_service.worker.policy_cache import LoadedPolicy, PolicyCache

log = logging.getLogger(__name__)
SEED_TOKENS = 32  # prompt tokens fed to a row's guards before its first output token
DENSE = tuple(c for c in COMPONENTS if type(c).dense_penalty is not GuardComponent.dense_penalty)
_CACHES: dict[int, PolicyCache] = {}  # this worker process's cache (the worker extension preloads into it)


def process_cache() -> PolicyCache | None:
    return next(iter(_CACHES.values()), None)


@dataclass
class RowState:
    steering: tuple[LoadedPolicy, ...]
    output_ids: list[int]  # vLLM's live list: it grows every step
    guards: list[RowGuard] = field(default_factory=list)
    marker: int | None = None
    cursor: int = 0
    failed: bool = False

    def advance(self) -> None:
        ids = self.output_ids
        while self.cursor < len(ids):
            tok = ids[self.cursor]
            if tok < 0:  # async-scheduling placeholder, repaired before sampling
                break
            for g in self.guards:
                g.feed(tok)
            self.cursor += 1


class GuardLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Frontend check (raising rejects only this request): the guard args are well formed. Whether a
        version can be loaded is the worker's question: one that cannot fails its row closed (a refusal), which
        a vanished artifact must not turn into a client error that names it."""
        GuardArgs.from_extra_args(getattr(sampling_params, "extra_args", None))

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.device = device
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self.eos_id = self._eos(vllm_config)
        classes = self._classes(vllm_config)
        config = vllm_config.additional_config or {}
        root = Path(config.get(ROOT_CONFIG_KEY, "policies"))
        self.heap = HeapTrimmer(float(config.get(HEAP_TRIM_CONFIG_KEY, 0)))
        self.cache = PolicyCache(root, WorkerContext(self.vocab_size, device, classes))
        _CACHES[id(self)] = self.cache
        self.word_continuing = torch.zeros(self.vocab_size, dtype=torch.bool)
        if classes is not None:
            n = min(self.vocab_size, len(classes))
            self.word_continuing[:n] = torch.from_numpy(classes.continues_word[:n])
        self.word_continuing = self.word_continuing.to(device)
        self.rows: dict[int, RowState] = {}

    @staticmethod
    def _eos(vllm_config: Any) -> int:
        hf = vllm_config.model_config.hf_config
        eos = getattr(hf, "eos_token_id", None)
        return int(eos[0] if isinstance(eos, list) else eos if eos is not None else 0)

    @staticmethod
    def _classes(vllm_config: Any) -> TokenClasses | None:
        """The served tokenizer's token classes (for the word rules); without them those rules are off and
        everything else still holds, so a tokenizer that cannot load here is logged, not fatal."""
        mc = vllm_config.model_config
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(mc.tokenizer, revision=mc.tokenizer_revision,
                                                      trust_remote_code=mc.trust_remote_code)
            return token_classes(tokenizer)
        except Exception:
            log.exception("guard: cannot load the tokenizer in the worker; truncated spellings are not banned")
            return None

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token wins: must run for greedy requests too

    def _new_state(self, params: Any, prompt_ids: list[int] | None, output_ids: list[int]) -> RowState | None:
        try:
            args = GuardArgs.from_extra_args(getattr(params, "extra_args", None))
        except ValueError:
            log.exception("guard: malformed guard args; failing this request closed")
            return RowState((), output_ids, failed=True)
        if args is None:
            return None
        try:
            steering = tuple(self.cache.get(k) for k in args.steer)
        except Exception:
            log.exception("guard: cannot load %s; failing this request closed", [str(k) for k in args.steer])
            metrics.FAILED_CLOSED.inc()
            return RowState((), output_ids, marker=args.marker, failed=True)
        watching = []
        for key in args.watch:
            try:
                watching.append(self.cache.get(key))
            except Exception:
                # The classifier did not match this request to the policy: one broken policy must not take
                # all traffic down with it. Counted and logged; the API process refuses what it would steer.
                log.exception("guard: cannot load %s for watch mode; skipped for this request", key)
                metrics.LOAD_FAILURES.inc()
        guards = [g for c in COMPONENTS for g in c.row_guards(
            [(p, p.parts[c.name]) for p in steering], [(p, p.parts[c.name]) for p in watching],
            self.cache.scratch[c.name])]
        tail = list(prompt_ids[-SEED_TOKENS:]) if prompt_ids else []
        for g in guards:
            g.seed(tail)
        return RowState(steering, output_ids, guards, args.marker)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self.heap.maybe()
        try:
            process_dict_updates(self.rows, batch_update, self._new_state)
        except Exception:
            log.exception("guard: update_state failed; guarded rows fail closed")
            for st in self.rows.values():
                st.failed = True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        try:
            self._apply(logits)
        except Exception:
            log.exception("guard: apply failed; guarded rows fail closed")
            for row, st in self.rows.items():
                self._force_end(logits, row, st.marker)
        return logits

    def _apply(self, logits: torch.Tensor) -> None:
        groups: dict[tuple[Any, ...], tuple[tuple[LoadedPolicy, ...], list[int]]] = {}
        ban_rows: list[int] = []
        ban_cols: list[int] = []
        soft_rows: list[int] = []
        soft_cols: list[int] = []
        soft_vals: list[float] = []
        stop_word: list[int] = []
        for row, st in self.rows.items():
            if st.failed:
                self._force_end(logits, row, st.marker)
                continue
            st.advance()
            if st.steering:
                groups.setdefault(tuple(p.key for p in st.steering), (st.steering, []))[1].append(row)
            hard: set[int] = {st.marker} if st.marker is not None and st.marker < logits.shape[1] else set()
            for g in st.guards:
                bans = g.bans()
                hard |= bans.hard
                for tok, amount in bans.soft:
                    soft_rows.append(row)
                    soft_cols.append(tok)
                    soft_vals.append(-amount)
                if bans.stop_word:
                    stop_word.append(row)
            ban_rows += [row] * len(hard)
            ban_cols += hard
        for policies, rows in groups.values():
            vec = self.cache.combined_penalty(policies, list(DENSE))
            if vec is None:
                continue
            for p in policies:
                p.penalized("semantic").inc(len(rows))
            index = torch.tensor(rows, device=logits.device)
            logits.index_add_(0, index, vec[: logits.shape[1]].to(logits.dtype).expand(len(rows), -1), alpha=-1)
        dev = logits.device
        if soft_rows:
            logits.index_put_((torch.tensor(soft_rows, device=dev), torch.tensor(soft_cols, device=dev)),
                              torch.tensor(soft_vals, device=dev, dtype=logits.dtype), accumulate=True)
        if ban_rows:
            logits.index_put_((torch.tensor(ban_rows, device=dev), torch.tensor(ban_cols, device=dev)),
                              torch.tensor(float("-inf"), device=dev, dtype=logits.dtype))
        mask = self.word_continuing[: logits.shape[1]]
        for row in stop_word:  # rare (inside a forbidden word): per-row masked fill beats a gather/scatter
            logits[row].masked_fill_(mask, float("-inf"))

    def _force_end(self, logits: torch.Tensor, row: int, marker: int | None) -> None:
        """End the row at once, on the marker token when the request has one (the API then refuses it)."""
        end = marker if marker is not None and marker < logits.shape[1] else self.eos_id
        logits[row].fill_(float("-inf"))
        logits[row, end] = 0.0
