"""The profile names (configs/<name>.yaml), importable without torch: the CLI lists them when it
builds its parser, also for commands that never train (backtest runs beside live processes)."""

PROFILES = ("low_memory", "default", "high_performance", "quick_demo", "auto")
