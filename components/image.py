"""The container image every component runs on (images/Dockerfile builds it).

Set RESET_IMAGE before the components are imported (the CLI's `compile --image` does) to point a
compiled pipeline at your registry. Locally (kfp.local, SubprocessRunner) the image is not used.
"""

import os

BASE_IMAGE = os.environ.get("RESET_IMAGE", "ghcr.io/reset-kfp/reset:0.1.0")
