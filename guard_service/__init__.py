"""guard-service: inference-time unlearning guardrail for LLM serving."""
__version__ = "0.1.0"
