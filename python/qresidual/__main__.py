"""The ``qresidual`` command, installed with the Python package."""

import signal
import sys

from . import _native


def main() -> None:
    # The work runs outside the interpreter: Ctrl-C must stop the process
    # as it stops the native command, not wait for the work to return.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_native.main(["qresidual", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
