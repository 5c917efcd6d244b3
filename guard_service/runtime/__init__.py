"""Guard runtime: the API-process view of active policies, the prompt classifier, the decision, and the
engine-worker logits processor that enforces a policy during decoding."""
