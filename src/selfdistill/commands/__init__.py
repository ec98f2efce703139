"""One module per command, each with ``run(args, argv) -> exit code``; :mod:`selfdistill.cli` parses the
arguments and imports only the module of the command given."""
