"""Placeholder: replaced by the module's owner."""


def register(subparsers):  # pragma: no cover - placeholder
    pass
