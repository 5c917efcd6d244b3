"""The API process's guard (below the HTTP layer): the active policies as this process sees them (registry),
the prompt classifier over the guard components' detectors, per-prompt decisions, the per-request session, the
output guard over the components' scanners, the typed account of what it did (summary), and its metrics."""
