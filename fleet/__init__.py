"""The fleet service (registry, rollouts, publishing).

Not built yet: see the project's issues. Imports only the kernel, paho-mqtt and sqlite-utils.
"""
