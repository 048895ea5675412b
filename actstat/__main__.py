"""`python -m actstat`: the same entry point as the `actstat` console script."""

from actstat.cli import main

main()
