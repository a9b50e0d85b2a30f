"""python -m tinytok.bench: the benchmark, with the flags of `tinytok bench`."""
import sys

from tinytok.bench.run import main

sys.exit(main())
