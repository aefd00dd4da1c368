"""`python -m assay ...` (and `torchrun ... -m assay ...`): the same CLI as the `assay` command."""

from assay.cli import main

main()
