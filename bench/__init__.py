"""Side-by-side benchmarks of secure-store, each against a baseline."""
