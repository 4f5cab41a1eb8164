"""The common entry point of the workflow command lines (``candle.search``, ``candle.uq``,
``candle.tda``): help, sub-command dispatch, and exit statuses for errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence

from candle.errors import CandleError, ConfigError

Command = Callable[[list[str]], int]


def workflow_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    doc: str | None,
    run: Command,
    commands: Mapping[str, Command],
) -> int:
    """Run ``commands[argv[0]]`` with the rest, or ``run`` with all of ``argv``.

    Exit status: the command's; 2 for a configuration error, 1 for another candle error (each
    printed as one line on stderr, naming ``prog``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        return 0
    try:
        command = commands.get(argv[0])
        return command(argv[1:]) if command else run(argv)
    except ConfigError as e:
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return 2
    except CandleError as e:
        print(f"{prog}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
