"""The device agent: receives bundles over MQTT, installs them atomically beside the previous
one, self-tests them, scores offline through a local API, and buffers telemetry and drift
summaries in SQLite until the broker acknowledges them (docs/agent.md).

Imports only the kernel (``edgeml.toolkit``), paho-mqtt and sqlite-utils: never the build stack.
"""
