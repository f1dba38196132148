"""CLI of the task_vectors method (subcommands are added as the method lands)."""


def register(sub) -> None:
    return None
