"""UART sensors: Plantower PMS5003/7003, Nova SDS011, Winsen MH-Z19B, NMEA 0183 GPS and
line-oriented text sensors.

Layers: ``transport`` (the port, reopened after a replug) -> ``framing`` (a byte stream ->
whole frames or lines, resynchronising after garbage) -> ``codecs`` (one frame or line ->
values, and the command frames a driver sends) -> ``protocols`` (one class per sensor family
behind one interface, picked from the ``PROTOCOLS`` table) -> ``driver`` (the window, polls,
requests, warm-up, health).
"""
