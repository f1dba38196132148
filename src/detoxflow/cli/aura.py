"""CLI of the aura method (subcommands are added as the method lands)."""


def register(sub) -> None:
    return None
