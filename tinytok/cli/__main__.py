"""python -m tinytok.cli: the `tinytok` command."""
import sys

from tinytok.cli import main

sys.exit(main())
