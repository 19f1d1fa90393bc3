"""Job entrypoint: `ray job submit --working-dir . -- python pipelines/pretrain.py --config ... --set ...`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, when not pip-installed

from plm_ray.cli import main  # noqa: E402

sys.exit(main(["pretrain", *sys.argv[1:]]))
