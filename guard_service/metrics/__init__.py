"""Prometheus metrics shared by the API process and the engine worker (multiprocess mode)."""
