"""Device drivers. Each family is a package with its config model, its code and a sample.

A driver is an async context manager with ``read()``; the agent polls it (drivers never
schedule themselves). ``tepi.drivers.registry`` maps a driver name to its config model and class.
"""

from tepi.core.records import MetricInfo, Sample
from tepi.drivers.base import Driver, DriverConfig, SharedResources

__all__ = ["Driver", "DriverConfig", "MetricInfo", "Sample", "SharedResources"]
