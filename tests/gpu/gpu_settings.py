"""What the GPU tests and their fixtures share (a module of its own: pytest loads several
conftest.py files in one run, so tests must not import from `conftest`)."""

import os

SERVED = os.environ.get("GPUSERVE_SERVED_NAME", "phi-2")
KEY = "sk-gpu-validation"
