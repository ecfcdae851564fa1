"""tepi_sim: a hand-written Modbus RTU/TCP device simulator with fault injection.

It stands in for field devices in tepi's tests and demos: RTU slaves on pseudo-terminals,
TCP slaves on 127.0.0.1, plausible drifting sensor values, exact read counters, and faults
(no reply, exceptions, bad CRC, garbage, partial frames, answers from the wrong unit,
disconnect, unplugged, slow) switchable at run time; outputs, with every write recorded
with its time (``WriteRecord``), and scripted values that follow a timeline. Simulated IP
cameras (``Camera``) serve snapshots, MJPEG and H.264 of a synthetic scene over HTTP, with
image and network faults and ground truth for the moving objects in view; or of a road
seen from above (``tepi_sim.traffic``) with the exact crossings per line and direction and
the queue length per zone, for camera analytics. It imports
nothing from tepi, so it is an independent check of tepi's Modbus client.
"""

from tepi_sim.camera import Camera
from tepi_sim.demo import DEMO_CONFIG
from tepi_sim.device import Device
from tepi_sim.errors import ConfigError, SimError, StartupError
from tepi_sim.memory import WriteRecord
from tepi_sim.model import CameraConfig, DeviceConfig, RegisterConfig, SimConfig, load_config
from tepi_sim.simulator import Simulator

__all__ = [
    "DEMO_CONFIG",
    "Camera",
    "CameraConfig",
    "ConfigError",
    "Device",
    "DeviceConfig",
    "RegisterConfig",
    "SimConfig",
    "SimError",
    "Simulator",
    "StartupError",
    "WriteRecord",
    "load_config",
]
