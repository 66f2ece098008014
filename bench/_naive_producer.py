"""The baseline for crash_soak: a device that keeps its queue in memory, as device SDKs do.

It hands events to paho (QoS 1, paho's in-memory queue) and prints each seq it accepted.
Whatever paho had not delivered when the process dies is gone.
"""

from __future__ import annotations

import json
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    port, seq = int(sys.argv[1]), int(sys.argv[2])  # continue after the last seq printed
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="naive-producer")
    client.connect_async("127.0.0.1", port)
    client.loop_start()
    while True:
        seq += 1
        body = {"device": "naive-1", "events": [{"seq": seq, "ts": time.time(),
                                                 "type": "test.telemetry", "class": "telemetry"}]}
        client.publish("curbside/v1/crash-site/naive-1/events", json.dumps(body), qos=1)
        print(seq, flush=True)
        time.sleep(1 / 400)


if __name__ == "__main__":
    main()
