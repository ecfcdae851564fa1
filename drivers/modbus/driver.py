"""A Modbus device: plan its reads once, then read, decode and stamp on every poll."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Self

from drivers.base import MetricInfo, Sample, SharedResources, boottime
from drivers.modbus.codec import bad_value, decode, plan_reads, scaled
from drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig
from drivers.modbus.link import ExceptionReply, ModbusLink
from gateway.errors import DeviceError, DeviceUnavailable


class ModbusDriver:
    """Reads one Modbus device's configured registers; see ``drivers.base.Driver``."""

    def __init__(
        self, config: ModbusRtuConfig | ModbusTcpConfig, resources: SharedResources
    ) -> None:
        self.config = config
        self._resources = resources
        self._plan = plan_reads(config.registers)
        self._link: ModbusLink | None = None
        if isinstance(config, ModbusRtuConfig):
            self._key: tuple[object, ...] = ("modbus-serial", config.port)
        else:
            self._key = ("modbus-tcp", config.host, config.port)

    async def _make_link(self) -> ModbusLink:
        cfg = self.config
        if isinstance(cfg, ModbusRtuConfig):
            return ModbusLink.serial(cfg.port, cfg.baudrate, cfg.parity, cfg.bytesize, cfg.stopbits)
        return ModbusLink.tcp(cfg.host, cfg.port)

    async def __aenter__(self) -> Self:
        link = await self._resources.acquire(self._key, self._make_link)
        assert isinstance(link, ModbusLink)
        self._link = link
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._link is not None:
            self._link = None
            await self._resources.release(self._key)

    def metrics(self) -> list[MetricInfo]:
        return [MetricInfo(r.name, r.unit) for r in self.config.registers]

    @property
    def requests_per_poll(self) -> int:
        return len(self._plan)

    async def read(self) -> list[Sample]:
        """One poll. Raises when no request got an answer; otherwise the requests that failed
        come back as bad samples with the failure's short reason."""
        if self._link is None:
            raise RuntimeError("ModbusDriver.read() outside its context")
        cfg = self.config
        samples: list[Sample] = []
        errors: list[DeviceError] = []
        answered = 0
        for req in self._plan:
            data: list[int] | list[bool] | ExceptionReply | DeviceError
            try:
                data = await self._link.read(
                    req.table, req.address, req.count, cfg.unit, cfg.timeout
                )
            except DeviceError as err:
                if isinstance(err, DeviceUnavailable) and answered == 0:
                    raise  # not answering: do not spend a timeout on each request
                data = err
            ts, mono = time.time(), boottime()
            if isinstance(data, DeviceError | ExceptionReply):
                if isinstance(data, DeviceError):
                    errors.append(data)
                else:
                    answered += 1
                samples.extend(
                    Sample(r.name, None, r.unit, ts, mono, data.reason) for r in req.registers
                )
                continue
            answered += 1
            for reg in req.registers:
                i = reg.address - req.address
                raw = decode(data[i : i + reg.width], reg.kind, reg.word_order)
                value = scaled(raw, reg)
                why = bad_value(value)
                samples.append(Sample(reg.name, None if why else value, reg.unit, ts, mono, why))
        if answered == 0 and errors:
            raise errors[0]
        return samples
