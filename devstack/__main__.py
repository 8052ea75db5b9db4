"""`python -m devstack run|test|bench|drills|manage [args]`: the launcher behind the Makefile's targets."""

import sys

from devstack.launcher import main

sys.exit(main(sys.argv[1:]))
