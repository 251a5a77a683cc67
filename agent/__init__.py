"""The device agent (transfer, install slots, self-test, local scoring API, telemetry buffer).

Not built yet: see the project's issues. Imports only the kernel, paho-mqtt and sqlite-utils.
"""
