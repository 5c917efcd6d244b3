"""The guard inside vLLM: a V1 batch-level logits processor living in the engine's worker process.

Per-request data arrives in `SamplingParams.extra_args`:
    guard_policies: "pol_a@3,pol_b@1"   the policy versions the prompt classifier matched (steer)
    guard_watch:    "pol_c@2"           every other applicable policy, in watch mode: only its verbatim
                                        protections hold (whole forbidden names are banned, protected
                                        documents vetoed), which leaves text that touches neither bit-identical
    guard_root:     "/srv/policies"     artifact location (shared by every replica)
Rows without either are never touched. Every guarded row's matchers are seeded with the prompt's last
tokens, so a forbidden string or a protected span begun in the prompt (a completion prompt, an assistant
prefill) cannot be finished by the output. For guarded rows, each step:
    1. consume the tokens generated since the last step (cursor over vLLM's live output list),
    2. subtract the combined semantic + first-token penalty (one `index_add_` per policy combination),
    3. set -inf on every token that would complete a forbidden sequence, or extend a verbatim span of a
       protected document to L tokens (provenance veto); softly penalise continuations from L/2,
    4. once enough of a forbidden string is spelled, set -inf on every way to go on with it (any next piece,
       and every word-continuing token while one of its words is open), so no truncated or bent spelling
       ("Hermion", "J.K.R", "J.K. Row", "Harry Potts") comes out: on steered rows from three characters, in
       watch mode from two tokens and four characters of a whole name (`WATCH_COMMIT`).
Nothing may raise out of `update_state`/`apply` (that kills the engine for everyone): a row whose policy
cannot be loaded fails closed, i.e. it is forced to end at once, and the API turns that into a refusal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from guard_service.metrics import definitions as metrics
from guard_service.policy.tokenization import TokenClasses, token_classes
from guard_service.runtime.policy_cache import LoadedPolicy, PolicyCache, parse_keys
from guard_service.runtime.provenance_veto import ProvenanceMatcher
from guard_service.runtime.trie import TrieMatcher

log = logging.getLogger(__name__)

POLICIES_ARG = "guard_policies"
WATCH_ARG = "guard_watch"
ROOT_ARG = "guard_root"
FQCN = "guard_service.runtime.logits_processor:GuardLogitsProcessor"
WATCH_BANS = metrics.TOKENS_PENALIZED.labels("watch", "token")  # one combined trie: not per policy
SEED_TOKENS = 32  # prompt tokens fed to a row's matchers before its first output token
# (characters, tokens) of a forbidden string spelled from a word boundary before every way to go on with it is
# banned (see trie.py). Steered rows are about the target, so three characters suffice ("Her|mione",
# "Row|ling"); watch mode runs on every other request, so it waits for two tokens and four characters of a
# whole name ("J.K.| Row", "Harry Pot|ts"): one common word (" Apple", " Her") is never enough.
STEER_COMMIT = (3, 1)
WATCH_COMMIT = (4, 2)


def guard_args(params: Any) -> tuple[list[tuple[str, int]], list[tuple[str, int]], str] | None:
    """(steering policies, watching policies, artifact root), or None for an unguarded row."""
    extra = getattr(params, "extra_args", None) or {}
    steer, watch = extra.get(POLICIES_ARG), extra.get(WATCH_ARG)
    if not steer and not watch:
        return None
    return parse_keys(str(steer or "")), parse_keys(str(watch or "")), str(extra.get(ROOT_ARG, ""))


@dataclass
class RowState:
    policies: tuple[LoadedPolicy, ...]
    output_ids: list[int]  # vLLM's live list: it grows every step
    matchers: list[TrieMatcher] = field(default_factory=list)
    watcher: TrieMatcher | None = None  # whole names of every watching policy, one combined trie
    provenance: list[tuple[LoadedPolicy, ProvenanceMatcher, bool]] = field(default_factory=list)  # bool: steering
    cursor: int = 0
    failed: bool = False

    def seed(self, prompt_ids: list[int] | None) -> None:
        tail = list(prompt_ids[-SEED_TOKENS:]) if prompt_ids else []
        for m in self.matchers:
            m.seed(tail)
        if self.watcher is not None:
            self.watcher.seed(tail)
        for _, pm, _ in self.provenance:
            for tok in tail:
                pm.feed(tok)

    def advance(self) -> None:
        ids = self.output_ids
        while self.cursor < len(ids):
            tok = ids[self.cursor]
            if tok < 0:  # async-scheduling placeholder, repaired before sampling
                break
            for m in self.matchers:
                m.feed(tok)
            if self.watcher is not None:
                self.watcher.feed(tok)
            for _, pm, _ in self.provenance:
                pm.feed(tok)
            self.cursor += 1

    def banned(self) -> tuple[set[int], list[tuple[int, float]], bool]:
        """(hard bans, soft penalties as (token, amount), whether to ban every word-continuing token); counts
        each policy's interventions."""
        out: set[int] = set()
        soft: list[tuple[int, float]] = []
        truncate = False
        for p, m in zip(self.policies, self.matchers, strict=True):
            if not p.ban:
                continue
            ways_on, open_word = m.committed(*STEER_COMMIT)
            b = m.banned() | ways_on
            if b or open_word:
                out |= b
                truncate |= open_word
                p.counters.token_bans.inc()
        if self.watcher is not None:
            ways_on, open_word = self.watcher.committed(*WATCH_COMMIT)
            b = self.watcher.banned() | ways_on
            if b or open_word:
                out |= b
                truncate |= open_word
                WATCH_BANS.inc()
            out.update(self.watcher.trie.always_banned)  # single-token names (steered rows: in the penalty)
        for p, pm, steering in self.provenance:
            tokens, hard = pm.continuations()
            if hard and tokens:
                out.update(tokens)
                p.counters.vetoes.inc()
            elif steering:  # watch mode only vetoes: a soft nudge would change unrelated text sharing a phrase
                soft += [(t, p.soft_penalty) for t in tokens]
        return out, soft, truncate


class GuardLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Frontend check (raising rejects only this request): the guard args are well formed. Whether a
        version can be loaded is the worker's question: one that cannot fails its row closed (a refusal), which
        a vanished artifact must not turn into a client error that names it."""
        guard_args(sampling_params)

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.device = device
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self.eos_id = self._eos(vllm_config)
        classes = self._classes(vllm_config)
        self.cache = PolicyCache(self.vocab_size, device, classes=classes)
        self.word_continuing = torch.zeros(self.vocab_size, dtype=torch.bool)
        if classes is not None:
            n = min(self.vocab_size, len(classes))
            self.word_continuing[:n] = torch.from_numpy(classes.continues_word[:n])
        self.word_continuing = self.word_continuing.to(device)
        self.rows: dict[int, RowState] = {}

    @staticmethod
    def _classes(vllm_config: Any) -> TokenClasses | None:
        """The served tokenizer's token classes (for the truncated-spelling rule); without them that one rule
        is off and everything else still holds, so a tokenizer that cannot load here is logged, not fatal."""
        mc = vllm_config.model_config
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(mc.tokenizer, revision=mc.tokenizer_revision,
                                                      trust_remote_code=mc.trust_remote_code)
            return token_classes(tokenizer)
        except Exception:
            log.exception("guard: cannot load the tokenizer in the worker; truncated spellings are not banned")
            return None

    @staticmethod
    def _eos(vllm_config: Any) -> int:
        hf = vllm_config.model_config.hf_config
        eos = getattr(hf, "eos_token_id", None)
        return int(eos[0] if isinstance(eos, list) else eos if eos is not None else 0)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token wins: must run for greedy requests too

    def _new_state(self, params: Any, prompt_ids: list[int] | None, output_ids: list[int]) -> RowState | None:
        args = guard_args(params)
        if args is None:
            return None
        steer, watch, root = args
        try:
            policies = tuple(self.cache.get(Path(root), pid, ver) for pid, ver in steer)
        except Exception:
            log.exception("guard: cannot load %s; failing this request closed", steer)
            metrics.FAILED_CLOSED.inc()
            return RowState(policies=(), output_ids=output_ids, failed=True)
        watching = []
        for pid, ver in watch:
            if (pid, ver) in steer:
                continue
            try:
                watching.append(self.cache.get(Path(root), pid, ver))
            except Exception:
                # The classifier did not match this request to the policy: one broken policy must not take
                # all traffic down with it. Counted and logged, and the policy's matching requests still fail
                # closed.
                log.exception("guard: cannot load %s@%d for watch mode; skipped for this request", pid, ver)
                metrics.LOAD_FAILURES.inc()
        state = RowState(policies=policies, output_ids=output_ids, matchers=[TrieMatcher(p.trie) for p in policies],
                         watcher=TrieMatcher(self.cache.watch_trie(tuple(watching))) if watching else None,
                         provenance=[(p, ProvenanceMatcher(p.provenance, p.min_span), p in policies)
                                     for p in (*policies, *watching) if p.provenance is not None])
        state.seed(prompt_ids)
        return state

    def update_state(self, batch_update: BatchUpdate | None) -> None:
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
            for row in self.rows:
                self._force_end(logits, row)
        return logits

    def _apply(self, logits: torch.Tensor) -> None:
        groups: dict[tuple[str, ...], tuple[tuple[LoadedPolicy, ...], list[int]]] = {}
        ban_rows: list[int] = []
        ban_cols: list[int] = []
        soft_rows: list[int] = []
        soft_cols: list[int] = []
        soft_vals: list[float] = []
        truncating: list[int] = []
        for row, st in self.rows.items():
            if st.failed:
                self._force_end(logits, row)
                continue
            st.advance()
            if st.policies:
                combo = tuple(p.key for p in st.policies)
                groups.setdefault(combo, (st.policies, []))[1].append(row)
            banned, soft, truncate = st.banned()
            if truncate:
                truncating.append(row)
            ban_rows += [row] * len(banned)
            ban_cols += banned
            for tok, amount in soft:
                soft_rows.append(row)
                soft_cols.append(tok)
                soft_vals.append(-amount)
        for policies, rows in groups.values():
            for p in policies:
                p.counters.semantic.inc(len(rows))
            vec = self.cache.combined_penalty(policies)[: logits.shape[1]]
            index = torch.tensor(rows, device=logits.device)
            logits.index_add_(0, index, vec.to(logits.dtype).expand(len(rows), -1), alpha=-1)
        if soft_rows:
            dev = logits.device
            logits.index_put_((torch.tensor(soft_rows, device=dev), torch.tensor(soft_cols, device=dev)),
                              torch.tensor(soft_vals, device=dev, dtype=logits.dtype), accumulate=True)
        if ban_rows:
            logits.index_put_((torch.tensor(ban_rows, device=logits.device),
                               torch.tensor(ban_cols, device=logits.device)),
                              torch.tensor(float("-inf"), device=logits.device, dtype=logits.dtype))
        mask = self.word_continuing[: logits.shape[1]]
        for row in truncating:  # rare (inside a forbidden word): per-row masked fill beats a gather/scatter
            logits[row].masked_fill_(mask, float("-inf"))

    def _force_end(self, logits: torch.Tensor, row: int) -> None:
        logits[row].fill_(float("-inf"))
        logits[row, self.eos_id] = 0.0
