"""Command line interface (placeholder until the commands land)."""


def main(argv: list[str] | None = None) -> int:
    return 0
