"""`python -m injector`: the same command as the `pod-identity-injector` console script."""

import sys

from injector.cli.main import main

if __name__ == "__main__":  # not when re-imported by a spawned worker process
    sys.exit(main())
