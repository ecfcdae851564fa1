"""tepi's agent: configuration, runtime supervision, uplink to the IOC, and the CLI."""

__version__ = "0.1.0"
