"""The ``graphopt`` command line."""

import sys


def main(argv=None) -> int:
    print("graphopt: commands are being built", file=sys.stderr)
    return 2
