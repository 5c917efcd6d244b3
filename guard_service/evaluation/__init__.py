"""Evaluation on the unlearning literature's own benchmarks (TOFU, MUSE, Harry Potter, RWKU), over real HTTP."""
