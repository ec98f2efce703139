"""``python -m selfdistill``: the command line, :func:`selfdistill.cli.main`."""

import os
import sys

try:
    from .cli import main
except KeyboardInterrupt as stop:  # Ctrl-C before cli's first lines could hold it back: the line a later one gets
    from .interrupts import stop_code, stopped_line

    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(stopped_line(stop, sys.argv[1:]), file=sys.stderr)
    sys.exit(stop_code(stop))
sys.exit(main())
