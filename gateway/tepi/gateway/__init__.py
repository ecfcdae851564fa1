"""tepi's agent: configuration, runtime supervision, uplink to the IOC, and the CLI."""
