"""The command-line layer: the only part of the package that speaks in ``--flags``.

Library errors (:mod:`ddpm_objectives_hf.errors`) name the parameter at fault; here a parameter becomes its flag
(``--`` + its name) and every error becomes one line on stderr with a non-zero exit (:func:`run_main`).
:mod:`.parsing` reads flags and config files, :mod:`.validation` checks their values before any work.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from ..errors import DDPMObjectivesError

EXIT_ERROR = 2  # a bad input (as argparse)
EXIT_INTERNAL = 1  # a bug
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def flag(parameter: str) -> str:
    """The command-line flag of a parameter: ``--`` + its name."""
    return f"--{parameter}"


def error_line(err: BaseException) -> str:
    """One line for the user: a library error's message with the parameter at fault named as its flag."""
    message = " ".join(str(err).split()) or type(err).__name__
    parameter = getattr(err, "parameter", None)
    if not isinstance(err, DDPMObjectivesError) or not parameter:
        return message
    if re.match(rf"{re.escape(parameter)}\b", message):
        return flag(parameter) + message[len(parameter) :]
    return message if flag(parameter) in message else f"{flag(parameter)}: {message}"


def os_error_line(err: OSError) -> str:
    """One line for a file-system error that names the file(s), e.g. ``Permission denied: '/data/out/logs'``."""
    files = [repr(str(f)) for f in (err.filename, err.filename2) if f is not None]
    if err.strerror and files:
        return f"{err.strerror}: {' -> '.join(files)}"
    return " ".join(str(err).split()) or type(err).__name__


def run_main(prog: str, body: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``body(argv)`` and turn any error into one line ``{prog}: error: ...`` on stderr.

    Exit codes: 0 on success (or ``--help``), 2 for bad input (library errors, missing or unwritable files),
    130 on Ctrl-C, 1 for anything unexpected (a bug: rerun with ``--debug`` for the traceback). With ``--debug``
    in ``argv`` errors are re-raised with their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return body(argv) or 0
    except SystemExit as exit_:  # --help (argparse), or a library that exits
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        line, code = str(exit_.code), EXIT_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        line, code = "interrupted (Ctrl-C)", EXIT_INTERRUPTED
    except DDPMObjectivesError as err:
        if debug:
            raise
        line, code = error_line(err), EXIT_ERROR
    except OSError as err:  # a file or folder that cannot be read or written
        if debug:
            raise
        line, code = os_error_line(err), EXIT_ERROR
    except Exception as err:  # noqa: BLE001  (a bug: still one line, the traceback with --debug)
        if debug:
            raise
        message = " ".join(str(err).split())[:500] or "no message"
        line = f"internal error {type(err).__name__}: {message} (rerun with --debug for the traceback)"
        code = EXIT_INTERNAL
    sys.stderr.flush()
    print(f"{prog}: error: {' '.join(line.split())}", file=sys.stderr, flush=True)
    return code
