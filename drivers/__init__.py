"""Device drivers. Each family is a package with its config model, its code and a sample.

A driver is an async context manager with ``read()``; the agent polls it (drivers never
schedule themselves). ``drivers.registry`` maps a driver name to its config model and class.
"""

from drivers.base import Driver, DriverConfig, MetricInfo, Sample, SharedResources

__all__ = ["Driver", "DriverConfig", "MetricInfo", "Sample", "SharedResources"]
