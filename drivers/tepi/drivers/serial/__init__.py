"""UART sensors: Plantower PMS5003/7003, Nova SDS011, Winsen MH-Z19B, NMEA 0183 GPS and
line-oriented text sensors.

Layers: ``framing`` (a byte stream -> whole frames or lines, resynchronising after garbage)
-> ``codecs`` (one frame or line -> values, and the command frames a driver sends).
"""
