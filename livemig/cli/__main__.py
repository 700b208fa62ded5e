"""`python -m livemig.cli`: the `livemig` command."""
from livemig.cli.entry import main

main()
