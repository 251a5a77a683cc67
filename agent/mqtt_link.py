"""The agent's MQTT connection: its own topics only, a retained status with a last will, and
QoS 1 publishes whose acknowledgement the caller hears about.

A thin shell over paho-mqtt: it connects (TLS and credentials from the config), reconnects by
itself with back-off, subscribes to the device's ``commands`` and ``transfer`` topics, parses
what arrives with :mod:`edgeml.toolkit.protocol` and hands each valid message to a callback;
malformed or foreign messages are counted and dropped, never raised into paho's thread. What
the messages mean is the daemon's business.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from edgeml.agent.config import AgentConfig
from edgeml.toolkit.protocol import (
    Message,
    ProtocolError,
    Status,
    device_topic,
    parse_message,
)

log = logging.getLogger("edgeml.agent.mqtt")

MessageHandler = Callable[[str, Message], None]
AckHandler = Callable[[], None]


class AgentLink:
    """One device's connection to the broker."""

    def __init__(
        self,
        config: AgentConfig,
        on_message: MessageHandler,
        current_status: Callable[[bool], Status],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._on_message = on_message
        self._current_status = current_status
        self._on_connected = on_connected
        self._acks: dict[int, AckHandler] = {}
        self._early_acks: set[int] = set()
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.dropped_messages = 0
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"edgeml-{config.device_id}",
            clean_session=False,
        )
        broker = config.broker
        if broker.username:
            client.username_pw_set(broker.username, broker.password())
        if broker.tls:
            client.tls_set(**broker.tls_arguments())
        offline = current_status(False)
        client.will_set(self.topic("status"), offline.to_bytes(), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(config.telemetry.max_in_flight + 10)
        client.max_queued_messages_set(0)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._received
        client.on_publish = self._published
        self._client = client

    def topic(self, kind: Any) -> str:
        return device_topic(self.config.device_id, kind)

    def start(self) -> None:
        """Connect in the background; paho's thread reconnects after every loss."""
        broker = self.config.broker
        self._client.connect_async(broker.host, broker.port, keepalive=broker.keepalive_s)
        self._client.loop_start()

    def stop(self) -> None:
        """Say the device is going offline (retained), then disconnect."""
        if self.connected.is_set():
            info = self._client.publish(
                self.topic("status"), self._current_status(False).to_bytes(), qos=1, retain=True
            )
            info.wait_for_publish(timeout=2)
        self._client.disconnect()
        self._client.loop_stop()

    def publish_status(self) -> None:
        """Publish the device's status (retained)."""
        self._client.publish(
            self.topic("status"), self._current_status(True).to_bytes(), qos=1, retain=True
        )

    def publish_event(self, message: Message) -> None:
        """Publish a command result or a transfer request."""
        self._client.publish(self.topic("events"), message.to_bytes(), qos=1)

    def publish_telemetry(self, payload: bytes, on_ack: AckHandler) -> bool:
        """Publish a telemetry window; ``on_ack`` runs once the broker acknowledged it.

        Returns:
            False when the message could not be queued (not connected): try again later.
        """
        if not self.connected.is_set():
            return False
        # Never hold our lock while calling paho: its network thread holds paho's own lock
        # while it calls _published, which takes ours (a lock-order deadlock otherwise).
        info = self._client.publish(self.topic("telemetry"), payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            return False
        # NO_CONN: paho keeps a QoS 1 message and sends it after reconnecting.
        with self._lock:
            if info.mid in self._early_acks:  # acknowledged before we registered it
                self._early_acks.discard(info.mid)
                early = True
            else:
                self._acks[info.mid] = on_ack
                early = False
        if early:
            on_ack()
        return True

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._acks)

    # ------------------------------------------------------------------ paho callbacks

    def _connected(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        client.subscribe([(self.topic("commands"), 1), (self.topic("transfer"), 1)])
        self.connected.set()
        self.publish_status()
        if self._on_connected is not None:
            self._on_connected()

    def _disconnected(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.connected.clear()
        log.info("disconnected from the broker (%s); reconnecting", reason)

    def _received(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        kind = message.topic.rsplit("/", 1)[-1]
        if message.topic != self.topic(kind if kind in ("commands", "transfer") else "commands"):
            self.dropped_messages += 1
            return
        try:
            parsed = parse_message(message.payload, kind)
        except ProtocolError as error:
            self.dropped_messages += 1
            log.warning("dropped a message on %s: %s", message.topic, error)
            return
        except Exception as error:  # a parser bug (e.g. a 400-digit number): still dropped,
            # never raised into paho's thread, which would stop hearing the broker for good
            self.dropped_messages += 1
            log.warning("dropped a message on %s: unparseable: %r", message.topic, error)
            return
        try:
            self._on_message(kind, parsed)
        except Exception:  # never let a handler's bug kill paho's network thread
            log.exception("handling a %s message failed", kind)

    def _published(
        self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        with self._lock:
            handler = self._acks.pop(mid, None)
            if handler is None:
                self._early_acks.add(mid)
                if len(self._early_acks) > 4096:  # acks of status and events messages
                    self._early_acks.clear()
        if handler is not None:
            handler()
