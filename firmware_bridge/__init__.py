"""Everything that speaks bytes on a serial line.

Codecs here are sans-I/O (bytes in, typed messages out); :mod:`firmware_bridge.serial_port`
is the one place that touches pyserial. This package imports nothing else from Curbside.
"""
