"""`python3 -m pyhello --version | --self-check | serve [ADDR]`."""

import sys

from . import __version__
from .service import self_check, serve


def main(argv):
    if not argv or argv[0] in ("--help", "-h"):
        print("usage: python3 -m pyhello --version | --self-check | serve [ADDR]")
        return 0
    if argv[0] == "--version":
        print(f"pyhello {__version__}")
        return 0
    if argv[0] == "--self-check":
        return self_check()
    if argv[0] == "serve":
        return serve(argv[1] if len(argv) > 1 else "0.0.0.0:8080")
    print(f"pyhello: unknown argument {argv[0]!r} (try --help)", file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))
