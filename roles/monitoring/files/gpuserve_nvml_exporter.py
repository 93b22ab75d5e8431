#!/usr/bin/env python3
"""gpuserve NVML exporter: per-GPU metrics from NVIDIA's NVML, in Prometheus text format.

Reads NVML (through nvidia-ml-py's ``pynvml``) on every scrape: utilisation, memory,
temperature, power, clocks, ECC error counts, and Xid errors counted from NVML's event
stream by a background thread. Fields a GPU does not support (ECC on consumer cards,
Xid events in some containers) are left out for that GPU, never reported as zero.

When NVML cannot be initialised (no driver, no GPU), the exporter still answers with
``gpuserve_nvml_up 0`` and retries, so Prometheus tells "exporter down" from "NVML down".

    gpuserve_nvml_exporter.py --listen 127.0.0.1:9835     # serve /metrics
    gpuserve_nvml_exporter.py --once                      # print the metrics once and exit

Needs: Python >= 3.10, nvidia-ml-py, prometheus-client.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

LOG = logging.getLogger("gpuserve_nvml_exporter")
DEFAULT_LISTEN = "127.0.0.1:9835"
MHZ = 1_000_000.0


class Nvml(Protocol):
    """The part of ``pynvml`` this exporter uses (the module itself satisfies it)."""

    NVMLError: type[Exception]
    NVML_ERROR_NOT_SUPPORTED: int
    NVML_ERROR_TIMEOUT: int
    NVML_TEMPERATURE_GPU: int
    NVML_CLOCK_SM: int
    NVML_CLOCK_MEM: int
    NVML_MEMORY_ERROR_TYPE_CORRECTED: int
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED: int
    NVML_VOLATILE_ECC: int
    nvmlEventTypeXidCriticalError: int

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str | bytes: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int: ...
    def nvmlDeviceGetClockInfo(self, handle: Any, clock: int) -> int: ...
    def nvmlDeviceGetTotalEccErrors(self, handle: Any, kind: int, counter: int) -> int: ...
    def nvmlEventSetCreate(self) -> Any: ...
    def nvmlDeviceRegisterEvents(self, handle: Any, events: int, event_set: Any) -> None: ...
    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any: ...
    def nvmlEventSetFree(self, event_set: Any) -> None: ...


def _text(value: str | bytes) -> str:
    """NVML strings: ``str`` from current nvidia-ml-py, ``bytes`` from old releases."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _error_code(nvml: Nvml, exc: BaseException) -> int | None:
    return getattr(exc, "value", None) if isinstance(exc, nvml.NVMLError) else None


@dataclass
class GpuSample:
    """One GPU's readings, in base units. ``None`` = not supported on this GPU."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    utilization: float | None = None  # 0..1, SM busy
    memory_utilization: float | None = None  # 0..1, memory controller busy
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    clock_sm_hertz: float | None = None
    clock_memory_hertz: float | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    errors: list[str] = field(default_factory=list)  # fields that failed (not "unsupported")


@dataclass
class Snapshot:
    """Everything one scrape exports."""

    nvml_up: bool
    driver_version: str = ""
    gpus: list[GpuSample] = field(default_factory=list)
    xid_counts: dict[tuple[str, int], int] = field(default_factory=dict)  # (uuid, xid) -> n
    xid_watched: dict[str, bool] = field(default_factory=dict)  # uuid -> events registered
    error: str = ""


def _optional(nvml: Nvml, sample: GpuSample, name: str, read: Callable[[], Any]) -> Any:
    """Call one NVML getter: NOT_SUPPORTED gives None; other NVML errors are recorded."""
    try:
        return read()
    except nvml.NVMLError as exc:
        if _error_code(nvml, exc) != nvml.NVML_ERROR_NOT_SUPPORTED:
            LOG.warning("GPU %d: reading %s failed: %s", sample.index, name, exc)
            sample.errors.append(name)
        return None


def read_gpu(nvml: Nvml, index: int) -> GpuSample:
    """Read one GPU. Identity fields must work; every reading is optional."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    sample = GpuSample(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        pci_bus_id=_text(nvml.nvmlDeviceGetPciInfo(handle).busId),
    )
    util = _optional(
        nvml, sample, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle)
    )
    if util is not None:
        sample.utilization = util.gpu / 100.0
        sample.memory_utilization = util.memory / 100.0
    mem = _optional(nvml, sample, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    if mem is not None:
        sample.memory_total_bytes = int(mem.total)
        sample.memory_used_bytes = int(mem.used)
        sample.memory_free_bytes = int(mem.free)
    temp = _optional(
        nvml,
        sample,
        "temperature",
        lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
    )
    sample.temperature_celsius = None if temp is None else float(temp)
    power = _optional(nvml, sample, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    sample.power_watts = None if power is None else power / 1000.0
    limit = _optional(
        nvml, sample, "power_limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle)
    )
    sample.power_limit_watts = None if limit is None else limit / 1000.0
    sm = _optional(
        nvml, sample, "clock_sm", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)
    )
    sample.clock_sm_hertz = None if sm is None else sm * MHZ
    memclk = _optional(
        nvml,
        sample,
        "clock_memory",
        lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
    )
    sample.clock_memory_hertz = None if memclk is None else memclk * MHZ
    sample.ecc_corrected = _optional(
        nvml,
        sample,
        "ecc_corrected",
        lambda: nvml.nvmlDeviceGetTotalEccErrors(
            handle, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_VOLATILE_ECC
        ),
    )
    sample.ecc_uncorrected = _optional(
        nvml,
        sample,
        "ecc_uncorrected",
        lambda: nvml.nvmlDeviceGetTotalEccErrors(
            handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC
        ),
    )
    return sample


class XidWatcher:
    """Counts Xid critical-error events per (GPU uuid, Xid code) from NVML's event set."""

    def __init__(self, nvml: Nvml, poll_ms: int = 1000) -> None:
        self._nvml = nvml
        self._poll_ms = poll_ms
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}
        self.watched: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None

    def register(self) -> bool:
        """Register every GPU for Xid events; False when no GPU supports them."""
        nvml = self._nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            LOG.warning("Xid events unavailable: %s", exc)
            return False
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            try:
                nvml.nvmlDeviceRegisterEvents(
                    handle, nvml.nvmlEventTypeXidCriticalError, self._event_set
                )
                self.watched[uuid] = True
            except nvml.NVMLError as exc:
                LOG.warning("GPU %d: Xid events unavailable: %s", index, exc)
                self.watched[uuid] = False
        return any(self.watched.values())

    def poll_once(self) -> bool:
        """Wait up to poll_ms for one event and count it. True if one was counted."""
        nvml = self._nvml
        try:
            data = nvml.nvmlEventSetWait_v2(self._event_set, self._poll_ms)
        except nvml.NVMLError as exc:
            if _error_code(nvml, exc) == nvml.NVML_ERROR_TIMEOUT:
                return False
            raise
        if not data.eventType & nvml.nvmlEventTypeXidCriticalError:
            return False
        uuid = _text(nvml.nvmlDeviceGetUUID(data.device))
        xid = int(data.eventData)
        LOG.error("GPU %s: Xid %d", uuid, xid)
        with self._lock:
            self._counts[(uuid, xid)] = self._counts.get((uuid, xid), 0) + 1
        return True

    def counts(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._counts)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except self._nvml.NVMLError as exc:
                LOG.warning("Xid event wait failed: %s; retrying in 5 s", exc)
                self._stop.wait(5.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xid-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=(self._poll_ms / 1000.0) + 1.0)
        if self._event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except self._nvml.NVMLError as exc:
                LOG.debug("freeing the event set failed: %s", exc)
            self._event_set = None


class NvmlSource:
    """Owns the NVML session: initialises it (retrying), snapshots it, watches Xids."""

    def __init__(
        self,
        nvml: Nvml,
        *,
        watch_xid: bool = True,
        retry_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._watch_xid = watch_xid
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._initialised = False
        self._last_attempt: float | None = None
        self._error = ""
        self.xid: XidWatcher | None = None

    def ensure_init(self) -> bool:
        if self._initialised:
            return True
        now = self._clock()
        if self._last_attempt is not None and now - self._last_attempt < self._retry_seconds:
            return False
        self._last_attempt = now
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            self._error = str(exc) or type(exc).__name__
            LOG.error("NVML init failed: %s (retrying every %.0f s)", exc, self._retry_seconds)
            return False
        self._initialised = True
        self._error = ""
        if self._watch_xid:
            watcher = XidWatcher(self._nvml)
            if watcher.register():
                watcher.start()
            self.xid = watcher
        return True

    def snapshot(self) -> Snapshot:
        if not self.ensure_init():
            return Snapshot(nvml_up=False, error=self._error)
        nvml = self._nvml
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            gpus = [read_gpu(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            LOG.error("NVML query failed: %s", exc)
            return Snapshot(nvml_up=False, error=str(exc) or type(exc).__name__)
        snap = Snapshot(nvml_up=True, driver_version=driver, gpus=gpus)
        if self.xid is not None:
            snap.xid_counts = self.xid.counts()
            snap.xid_watched = dict(self.xid.watched)
        return snap

    def close(self) -> None:
        if self.xid is not None:
            self.xid.stop()
        if self._initialised:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                LOG.debug("nvmlShutdown failed: %s", exc)
            self._initialised = False


_GAUGES: tuple[tuple[str, str, str], ...] = (
    # (GpuSample attribute, metric name, help)
    ("utilization", "gpuserve_gpu_utilization_ratio", "Fraction of time a kernel ran (0..1)."),
    (
        "memory_utilization",
        "gpuserve_gpu_memory_utilization_ratio",
        "Fraction of time device memory was read or written (0..1).",
    ),
    ("memory_total_bytes", "gpuserve_gpu_memory_total_bytes", "Device memory, total."),
    ("memory_used_bytes", "gpuserve_gpu_memory_used_bytes", "Device memory, allocated."),
    ("memory_free_bytes", "gpuserve_gpu_memory_free_bytes", "Device memory, free."),
    ("temperature_celsius", "gpuserve_gpu_temperature_celsius", "GPU core temperature."),
    ("power_watts", "gpuserve_gpu_power_watts", "Power draw."),
    ("power_limit_watts", "gpuserve_gpu_power_limit_watts", "Enforced power limit."),
    ("clock_sm_hertz", "gpuserve_gpu_clock_sm_hertz", "Current SM clock."),
    ("clock_memory_hertz", "gpuserve_gpu_clock_memory_hertz", "Current memory clock."),
)
_GPU_LABELS = ["gpu", "uuid"]


def snapshot_to_metrics(snap: Snapshot, scrape_seconds: float = 0.0) -> list[Metric]:
    """Turn one snapshot into Prometheus metric families (absent readings are skipped)."""
    up = GaugeMetricFamily("gpuserve_nvml_up", "1 if NVML answered this scrape, else 0.")
    up.add_metric([], 1.0 if snap.nvml_up else 0.0)
    duration = GaugeMetricFamily(
        "gpuserve_nvml_scrape_duration_seconds", "Time spent reading NVML for this scrape."
    )
    duration.add_metric([], scrape_seconds)
    out: list[Metric] = [up, duration]
    if not snap.nvml_up:
        return out
    driver = GaugeMetricFamily(
        "gpuserve_gpu_driver_info", "NVIDIA driver version (always 1).", labels=["driver_version"]
    )
    driver.add_metric([snap.driver_version], 1.0)
    count = GaugeMetricFamily("gpuserve_gpu_count", "GPUs NVML reports.")
    count.add_metric([], float(len(snap.gpus)))
    info = GaugeMetricFamily(
        "gpuserve_gpu_info", "GPU identity (always 1).", labels=[*_GPU_LABELS, "name", "pci_bus_id"]
    )
    out += [driver, count, info]
    gauges = {attr: GaugeMetricFamily(name, doc, labels=_GPU_LABELS) for attr, name, doc in _GAUGES}
    ecc = CounterMetricFamily(
        "gpuserve_gpu_ecc_errors",
        "ECC errors since the driver loaded (volatile), by type.",
        labels=[*_GPU_LABELS, "type"],
    )
    read_errors = GaugeMetricFamily(
        "gpuserve_gpu_read_errors",
        "NVML fields that failed (other than unsupported) in this scrape.",
        labels=_GPU_LABELS,
    )
    for gpu in snap.gpus:
        labels = [str(gpu.index), gpu.uuid]
        info.add_metric([*labels, gpu.name, gpu.pci_bus_id], 1.0)
        for attr, _name, _doc in _GAUGES:
            value = getattr(gpu, attr)
            if value is not None:
                gauges[attr].add_metric(labels, float(value))
        if gpu.ecc_corrected is not None:
            ecc.add_metric([*labels, "corrected"], float(gpu.ecc_corrected))
        if gpu.ecc_uncorrected is not None:
            ecc.add_metric([*labels, "uncorrected"], float(gpu.ecc_uncorrected))
        read_errors.add_metric(labels, float(len(gpu.errors)))
    out += [gauges[attr] for attr, _n, _d in _GAUGES]
    out += [ecc, read_errors]
    out += _xid_metrics(snap)
    return out


def _xid_metrics(snap: Snapshot) -> list[Metric]:
    index_of = {gpu.uuid: str(gpu.index) for gpu in snap.gpus}
    watched = GaugeMetricFamily(
        "gpuserve_gpu_xid_events_supported",
        "1 if Xid critical-error events are watched on this GPU.",
        labels=_GPU_LABELS,
    )
    by_index = sorted(
        snap.xid_watched.items(), key=lambda kv: (int(index_of.get(kv[0], "-1")), kv[0])
    )
    for uuid, ok in by_index:
        watched.add_metric([index_of.get(uuid, ""), uuid], 1.0 if ok else 0.0)
    xids = CounterMetricFamily(
        "gpuserve_gpu_xid_errors",
        "Xid critical errors seen since the exporter started, by Xid code.",
        labels=[*_GPU_LABELS, "xid"],
    )
    for (uuid, code), n in sorted(snap.xid_counts.items()):
        xids.add_metric([index_of.get(uuid, ""), uuid, str(code)], float(n))
    return [watched, xids]


class NvmlCollector:
    """A prometheus_client collector that reads NVML on every scrape."""

    def __init__(self, source: NvmlSource) -> None:
        self._source = source
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # NVML calls from concurrent scrapes are serialised
            start = time.perf_counter()
            snap = self._source.snapshot()
            yield from snapshot_to_metrics(snap, time.perf_counter() - start)

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand; nothing to describe up front


def load_nvml() -> Nvml:
    """The real NVML binding. Fails with one clear line when nvidia-ml-py is missing."""
    try:
        import pynvml  # imported here: tests and --help need no NVML binding
    except ImportError:
        raise SystemExit(
            "gpuserve_nvml_exporter: the Python package nvidia-ml-py (module pynvml) is "
            "missing: pip install nvidia-ml-py"
        ) from None
    nvml: Nvml = pynvml  # type: ignore[assignment]  # the module satisfies the protocol
    return nvml


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"--listen {value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}"
        )
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpuserve_nvml_exporter",
        description="Prometheus exporter for NVIDIA GPU metrics read from NVML.",
    )
    p.add_argument(
        "--listen",
        type=parse_listen,
        default=parse_listen(DEFAULT_LISTEN),
        help=f"HOST:PORT to serve /metrics on (default {DEFAULT_LISTEN})",
    )
    p.add_argument("--once", action="store_true", help="print the metrics once and exit")
    p.add_argument("--no-xid", action="store_true", help="do not watch Xid error events")
    p.add_argument(
        "--nvml-retry-seconds",
        type=float,
        default=30.0,
        help="when NVML init fails, try again after this long (default 30)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


class _Fixed:
    """A collector over metrics already read (for --once)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def render(metrics: list[Metric]) -> str:
    """Prometheus text format of the given metric families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(metrics))  # type: ignore[arg-type]
    return generate_latest(registry).decode("utf-8")


def make_registry(source: NvmlSource) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NvmlCollector(source))  # type: ignore[arg-type]
    return registry


def run(argv: Sequence[str] | None = None, nvml: Nvml | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    binding = nvml if nvml is not None else load_nvml()
    if args.once:
        source = NvmlSource(binding, watch_xid=False, retry_seconds=0.0)
        start = time.perf_counter()
        snap = source.snapshot()
        metrics = snapshot_to_metrics(snap, time.perf_counter() - start)
        source.close()
        sys.stdout.write(render(metrics))
        if not snap.nvml_up:
            LOG.error("NVML unavailable: %s", snap.error)
        return 0 if snap.nvml_up else 1
    source = NvmlSource(binding, watch_xid=not args.no_xid, retry_seconds=args.nvml_retry_seconds)
    source.ensure_init()
    host, port = args.listen
    server, thread = start_http_server(port, addr=host, registry=make_registry(source))
    LOG.info("serving /metrics on %s:%d", host, port)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        LOG.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stop.wait()
    server.shutdown()
    thread.join(timeout=5)
    source.close()
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
