"""petlbench: a benchmark suite and leaderboard harness for parameter-efficient tuning."""

__version__ = "0.1.0"
