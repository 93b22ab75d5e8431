"""Shared by the monitoring scenario's test files: the GPU host (simulator engine) they reach
from the Prometheus host they run on."""

import pytest
import testinfra

GPU_HOST = "monitoring-gpu-debian12"


@pytest.fixture(scope="module")
def gpu(request):
    return testinfra.get_host(
        f"ansible://{GPU_HOST}", ansible_inventory=request.config.option.ansible_inventory
    )
