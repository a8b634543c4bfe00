"""The leaderboard: committed run records (``records/*.jsonl``, written by ``bench export``) ->
``leaderboard.json`` (validated against ``schema.json``), ``leaderboard.md``, ``leaderboard.csv``,
``index.html`` and a Pareto plot, rebuilt by ``bench leaderboard build`` and verified by ``bench leaderboard
check``; ``bench leaderboard plot`` draws any two columns of a built leaderboard."""
