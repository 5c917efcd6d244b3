"""The compiler: unlearning request -> immutable policy artifact (compile.py), and the compile loop every API
process runs against the shared store (scheduler.py)."""
