"""The one error base kddiag raises for bad input; the CLI shows it as one line and exits 1."""


class KddiagError(ValueError):
    """Bad user input: a file, an argument or data that cannot be used, with what was expected."""


class UnsafeLoadError(KddiagError):
    """A checkpoint needs unpickling (arbitrary code execution) and the user did not trust it."""
