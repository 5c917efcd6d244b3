"""Policy compiler: a knowledge-level unlearning request -> versioned, immutable artifacts on disk."""
