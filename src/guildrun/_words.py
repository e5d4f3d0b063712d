"""Names the command line offers before anything heavy is loaded (its `--help` and
argument choices), kept apart so that `guildrun --help` need not import pydantic."""

STRATEGIES: tuple[str, ...] = ("work-stealing", "round-robin", "longest-first", "auto")
