import sys

from cost_middleware.cli import main

sys.exit(main())
