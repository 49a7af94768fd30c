"""kvqueue's benchmarks: one scenario module per scenario of the benchmark issue (S1 to S8),
run together by ``scripts/bench`` (``python -m bench``). Not part of the test suite."""
