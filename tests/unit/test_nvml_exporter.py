"""The NVML exporter's parsing and export logic (roles/monitoring/files/gpuserve_nvml_exporter.py).

NVML is replaced by FakeNvml, a test double defined here that mimics the parts of
``pynvml`` the exporter calls (return shapes, error codes, event set). The exporter
itself never falls back to it. The exporter's output is parsed back with
prometheus_client's own text parser, so the tests check what Prometheus would read.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

SCRIPT = Path(__file__).resolve().parents[2] / "roles/monitoring/files/gpuserve_nvml_exporter.py"
spec = importlib.util.spec_from_file_location("gpuserve_nvml_exporter", SCRIPT)
assert spec
assert spec.loader
exporter = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = exporter  # dataclasses resolve annotations through sys.modules
spec.loader.exec_module(exporter)

NOT_SUPPORTED = 3
TIMEOUT = 10
DRIVER_NOT_LOADED = 9
UNKNOWN = 999
GIB = 1024**3


class FakeNVMLError(Exception):
    """pynvml.NVMLError's shape: an exception carrying the NVML return code in .value."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    name: str | bytes
    bus_id: str | bytes
    util: tuple[int, int] | None = (37, 12)  # (gpu %, memory %)
    mem: tuple[int, int, int] | None = (80 * GIB, 20 * GIB, 60 * GIB)  # total, used, free
    temp: int | None = 45
    power_mw: int | None = 123456
    limit_mw: int | None = 700000
    sm_mhz: int | None = 1980
    mem_mhz: int | None = 2619
    ecc: tuple[int, int] | None = (3, 0)  # corrected, uncorrected; None = unsupported
    events: bool = True
    broken: frozenset[str] = frozenset()  # getters that fail with an unexpected error


class FakeNvml:
    """A pynvml stand-in: handles are the GPU indexes."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_ERROR_TIMEOUT = TIMEOUT
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    nvmlEventTypeXidCriticalError = 8

    def __init__(self, gpus: list[FakeGpu], *, init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.init_calls = 0
        self.shutdown_calls = 0
        self.pending_events: list[Any] = []
        self.registered: list[int] = []
        self.freed = False

    def _gpu(self, handle: int, getter: str) -> FakeGpu:
        gpu = self.gpus[handle]
        if getter in gpu.broken:
            raise FakeNVMLError(UNKNOWN)
        return gpu

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self.gpus[handle].name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.gpus[handle].uuid

    def nvmlDeviceGetPciInfo(self, handle: int) -> Any:
        return SimpleNamespace(busId=self.gpus[handle].bus_id)

    @staticmethod
    def _value(value: Any) -> Any:
        if value is None:
            raise FakeNVMLError(NOT_SUPPORTED)
        return value

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        gpu, mem = self._value(self._gpu(handle, "util").util)
        return SimpleNamespace(gpu=gpu, memory=mem)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        total, used, free = self._value(self._gpu(handle, "mem").mem)
        return SimpleNamespace(total=total, used=used, free=free)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._value(self._gpu(handle, "temp").temp)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._value(self._gpu(handle, "power").power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._value(self._gpu(handle, "limit").limit_mw)

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        gpu = self._gpu(handle, "clock")
        return self._value(gpu.sm_mhz if clock == self.NVML_CLOCK_SM else gpu.mem_mhz)

    def nvmlDeviceGetTotalEccErrors(self, handle: int, kind: int, counter: int) -> int:
        assert counter == self.NVML_VOLATILE_ECC
        ecc = self._value(self._gpu(handle, "ecc").ecc)
        return ecc[0] if kind == self.NVML_MEMORY_ERROR_TYPE_CORRECTED else ecc[1]

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle: int, events: int, event_set: Any) -> None:
        assert events == self.nvmlEventTypeXidCriticalError
        assert event_set == "event-set"
        if not self.gpus[handle].events:
            raise FakeNVMLError(NOT_SUPPORTED)
        self.registered.append(handle)

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        if not self.pending_events:
            raise FakeNVMLError(TIMEOUT)
        return self.pending_events.pop(0)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self.freed = True


def h100(index: int = 0, **kw: Any) -> FakeGpu:
    return FakeGpu(
        uuid=f"GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd",
        name="NVIDIA H100 80GB HBM3",
        bus_id=f"00000000:0{index}:00.0",
        **kw,
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse exposition text into {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict[Any, float], metric: str, /, **labels: str) -> float:
    return parsed[(metric, tuple(sorted(labels.items())))]


def export(nvml: FakeNvml, **source_kw: Any) -> str:
    source = exporter.NvmlSource(nvml, watch_xid=False, **source_kw)
    return exporter.render(exporter.snapshot_to_metrics(source.snapshot(), 0.001))


def test_readings_are_exported_in_base_units() -> None:
    parsed = samples(export(FakeNvml([h100(0)])))
    gpu = {"gpu": "0", "uuid": h100(0).uuid}
    assert value(parsed, "gpuserve_nvml_up") == 1.0
    assert value(parsed, "gpuserve_gpu_count") == 1.0
    assert value(parsed, "gpuserve_gpu_utilization_ratio", **gpu) == pytest.approx(0.37)
    assert value(parsed, "gpuserve_gpu_memory_utilization_ratio", **gpu) == pytest.approx(0.12)
    assert value(parsed, "gpuserve_gpu_memory_total_bytes", **gpu) == 80 * GIB
    assert value(parsed, "gpuserve_gpu_memory_used_bytes", **gpu) == 20 * GIB
    assert value(parsed, "gpuserve_gpu_memory_free_bytes", **gpu) == 60 * GIB
    assert value(parsed, "gpuserve_gpu_temperature_celsius", **gpu) == 45.0
    assert value(parsed, "gpuserve_gpu_power_watts", **gpu) == pytest.approx(123.456)
    assert value(parsed, "gpuserve_gpu_power_limit_watts", **gpu) == 700.0
    assert value(parsed, "gpuserve_gpu_clock_sm_hertz", **gpu) == 1980e6
    assert value(parsed, "gpuserve_gpu_clock_memory_hertz", **gpu) == 2619e6
    assert value(parsed, "gpuserve_gpu_ecc_errors_total", type="corrected", **gpu) == 3.0
    assert value(parsed, "gpuserve_gpu_ecc_errors_total", type="uncorrected", **gpu) == 0.0
    assert value(parsed, "gpuserve_gpu_read_errors", **gpu) == 0.0


def test_identity_labels_and_driver_version() -> None:
    parsed = samples(export(FakeNvml([h100(0)])))
    info = value(
        parsed,
        "gpuserve_gpu_info",
        gpu="0",
        uuid=h100(0).uuid,
        name="NVIDIA H100 80GB HBM3",
        pci_bus_id="00000000:00:00.0",
    )
    assert info == 1.0
    assert value(parsed, "gpuserve_gpu_driver_info", driver_version="580.159.04") == 1.0


def test_bytes_strings_from_old_nvidia_ml_py_are_decoded() -> None:
    gpu = FakeGpu(uuid="GPU-1", name=b"NVIDIA GeForce RTX 5090", bus_id=b"00000000:41:00.0")
    parsed = samples(export(FakeNvml([gpu])))
    labels = {
        "gpu": "0",
        "uuid": "GPU-1",
        "name": "NVIDIA GeForce RTX 5090",
        "pci_bus_id": "00000000:41:00.0",
    }
    assert value(parsed, "gpuserve_gpu_info", **labels) == 1.0


def test_unsupported_fields_are_omitted_not_zero() -> None:
    # A consumer card: no ECC, no power limit; its sibling supports both.
    consumer = h100(1, ecc=None, limit_mw=None)
    parsed = samples(export(FakeNvml([h100(0), consumer])))
    names_gpu1 = {name for (name, labels) in parsed if ("gpu", "1") in labels}
    assert "gpuserve_gpu_ecc_errors_total" not in names_gpu1
    assert "gpuserve_gpu_power_limit_watts" not in names_gpu1
    assert "gpuserve_gpu_temperature_celsius" in names_gpu1
    assert value(parsed, "gpuserve_gpu_read_errors", gpu="1", uuid=consumer.uuid) == 0.0
    assert value(parsed, "gpuserve_gpu_count") == 2.0


def test_unexpected_field_errors_are_counted_and_the_rest_exported() -> None:
    gpu = h100(0, broken=frozenset({"temp", "power"}))
    parsed = samples(export(FakeNvml([gpu])))
    labels = {"gpu": "0", "uuid": gpu.uuid}
    assert value(parsed, "gpuserve_gpu_read_errors", **labels) == 2.0
    assert ("gpuserve_gpu_temperature_celsius", tuple(sorted(labels.items()))) not in parsed
    assert value(parsed, "gpuserve_gpu_utilization_ratio", **labels) == pytest.approx(0.37)


def test_nvml_init_failure_reports_down_and_no_gpu_series() -> None:
    nvml = FakeNvml([h100(0)], init_error=DRIVER_NOT_LOADED)
    parsed = samples(export(nvml, retry_seconds=30.0))
    assert value(parsed, "gpuserve_nvml_up") == 0.0
    assert not [name for (name, _labels) in parsed if name.startswith("gpuserve_gpu_")]


def test_nvml_init_is_retried_after_the_retry_interval_only() -> None:
    now = [100.0]
    nvml = FakeNvml([h100(0)], init_error=DRIVER_NOT_LOADED)
    source = exporter.NvmlSource(nvml, watch_xid=False, retry_seconds=30.0, clock=lambda: now[0])
    assert not source.snapshot().nvml_up
    now[0] += 10
    assert not source.snapshot().nvml_up
    assert nvml.init_calls == 1  # within the interval: no new attempt
    nvml.init_error = None  # the driver came back
    now[0] += 25
    snap = source.snapshot()
    assert snap.nvml_up
    assert nvml.init_calls == 2
    assert [g.uuid for g in snap.gpus] == [h100(0).uuid]


def test_xid_events_are_counted_per_gpu_and_code() -> None:
    gpus = [h100(0), h100(1), h100(2, events=False)]
    nvml = FakeNvml(gpus)
    watcher = exporter.XidWatcher(nvml, poll_ms=1)
    assert watcher.register()
    assert nvml.registered == [0, 1]
    xid = nvml.nvmlEventTypeXidCriticalError
    nvml.pending_events = [
        SimpleNamespace(device=1, eventType=xid, eventData=79),
        SimpleNamespace(device=1, eventType=xid, eventData=79),
        SimpleNamespace(device=0, eventType=xid, eventData=48),
    ]
    assert [watcher.poll_once() for _ in range(4)] == [True, True, True, False]  # then timeout
    snap = exporter.Snapshot(
        nvml_up=True,
        driver_version="580.159.04",
        gpus=[exporter.read_gpu(nvml, i) for i in range(3)],
        xid_counts=watcher.counts(),
        xid_watched=watcher.watched,
    )
    parsed = samples(exporter.render(exporter.snapshot_to_metrics(snap)))
    assert value(parsed, "gpuserve_gpu_xid_errors_total", gpu="1", uuid=gpus[1].uuid, xid="79") == 2
    assert value(parsed, "gpuserve_gpu_xid_errors_total", gpu="0", uuid=gpus[0].uuid, xid="48") == 1
    supported = {"gpu": "2", "uuid": gpus[2].uuid}
    assert value(parsed, "gpuserve_gpu_xid_events_supported", **supported) == 0.0
    watcher.stop()
    assert nvml.freed


def test_unexpected_event_wait_error_propagates_to_the_retry_loop() -> None:
    nvml = FakeNvml([h100(0)])
    watcher = exporter.XidWatcher(nvml, poll_ms=1)
    watcher.register()

    def broken_wait(event_set: Any, timeout_ms: int) -> Any:
        raise FakeNVMLError(UNKNOWN)

    nvml.nvmlEventSetWait_v2 = broken_wait  # type: ignore[method-assign]
    with pytest.raises(FakeNVMLError):
        watcher.poll_once()


def test_once_prints_metrics_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    nvml = FakeNvml([h100(0)])
    assert exporter.run(["--once"], nvml=nvml) == 0
    parsed = samples(capsys.readouterr().out)
    assert value(parsed, "gpuserve_nvml_up") == 1.0
    assert value(parsed, "gpuserve_gpu_temperature_celsius", gpu="0", uuid=h100(0).uuid) == 45
    assert nvml.shutdown_calls == 1


def test_once_without_nvml_prints_up_zero_and_exits_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    nvml = FakeNvml([], init_error=DRIVER_NOT_LOADED)
    assert exporter.run(["--once"], nvml=nvml) == 1
    assert value(samples(capsys.readouterr().out), "gpuserve_nvml_up") == 0.0


@pytest.mark.parametrize(
    ("arg", "expected"),
    [("127.0.0.1:9835", ("127.0.0.1", 9835)), ("[::1]:9000", ("::1", 9000))],
)
def test_listen_address_is_parsed(arg: str, expected: tuple[str, int]) -> None:
    assert exporter.parse_listen(arg) == expected


@pytest.mark.parametrize("arg", ["9835", "host:", ":9835", "host:0", "host:70000", "host:x"])
def test_bad_listen_address_is_refused(arg: str) -> None:
    with pytest.raises(Exception, match="expected HOST:PORT"):
        exporter.parse_listen(arg)


def test_http_endpoint_serves_live_readings() -> None:
    """The collector reads NVML on every scrape (a temperature change shows up)."""
    from prometheus_client import start_http_server

    nvml = FakeNvml([h100(0)])
    source = exporter.NvmlSource(nvml, watch_xid=False)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=exporter.make_registry(source))
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        labels = {"gpu": "0", "uuid": h100(0).uuid}
        with urllib.request.urlopen(url, timeout=5) as resp:
            first = samples(resp.read().decode())
        nvml.gpus[0].temp = 88
        with urllib.request.urlopen(url, timeout=5) as resp:
            second = samples(resp.read().decode())
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert value(first, "gpuserve_gpu_temperature_celsius", **labels) == 45.0
    assert value(second, "gpuserve_gpu_temperature_celsius", **labels) == 88.0


def test_concurrent_scrapes_are_serialised() -> None:
    nvml = FakeNvml([h100(0), h100(1)])
    collector = exporter.NvmlCollector(exporter.NvmlSource(nvml, watch_xid=False))
    results: list[int] = []

    def scrape() -> None:
        results.append(len(list(collector.collect())))

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert len(results) == 8
