"""Engine-facing request path: prompt rendering, sampling parameters, streaming generation."""
