"""Methods vLLM mixes into its worker (`worker_extension_cls`), called by the API process through
`AsyncLLM.collective_rpc`: between engine steps, never inside one."""

from __future__ import annotations

import logging

from guard_service.protocol import PolicyKey

log = logging.getLogger(__name__)


class GuardWorkerExtension:
    def guard_preload(self, keys: list[str], active: list[str] | None = None) -> int:
        """Load these policy versions into this worker's cache now, so the first row that names one does not
        pay for it inside a step; with `active` (every version the API process enforces), drop the others
        first (revoked, expired: under policy churn they were kept until the cache's capacity). Returns how many
        loaded; one that cannot load is left to fail its rows closed when they come (logged here, counted
        there)."""
        from guard_service.worker.logits_processor import process_cache

        cache = process_cache()
        if cache is None:
            return 0
        if active is not None:
            cache.retain({PolicyKey.parse(text) for text in active})
        loaded = 0
        for text in keys:
            try:
                cache.get(PolicyKey.parse(text))
                loaded += 1
            except Exception:
                log.exception("guard: preload of %s failed", text)
        return loaded
