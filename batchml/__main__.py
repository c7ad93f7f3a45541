"""`python -m batchml`: the same as the `batchml` command."""

from batchml.cli import main

main()
