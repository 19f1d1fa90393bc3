import sys

from plm_ray.cli import main

sys.exit(main())
