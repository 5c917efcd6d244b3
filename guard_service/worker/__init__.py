"""The engine worker's guard: the vLLM logits processor that runs the guard components' row guards, the cache of
policy versions loaded onto the engine's device, and the worker extension the API process preloads through.
It depends only on the artifact format, the protocol, the components and the metric definitions."""
