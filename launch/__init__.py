"""The `neurograph` CLI, the run configuration and the launchers (local processes, Ray)."""
