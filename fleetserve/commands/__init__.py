"""Sub-command implementations; each module registers its arguments with fleetserve.cli.command."""


def register_all() -> None:
    import fleetserve.commands.arguments  # noqa: F401
