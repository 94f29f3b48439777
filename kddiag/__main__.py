"""``python -m kddiag``: the same command line as ``kddiag``."""
from kddiag.cli import main

main(prog_name="kddiag")
