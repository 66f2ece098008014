"""The gpiozero adapter: pin factories by name, and the one place GPIO callbacks cross
into the event loop.

gpiozero calls ``when_activated``/``when_deactivated`` on its own threads (lgpio's
callback thread, or whoever drives a MockPin); :class:`InputSwitch` forwards each change
to the loop with ``call_soon_threadsafe`` and nothing else here touches threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from edge.config import GpioHardware, MockHardware
from edge.errors import HardwareError

# name -> "module:Class", imported only when chosen (python-can's backend registry habit)
PIN_FACTORIES = {
    "lgpio": "gpiozero.pins.lgpio:LGPIOFactory",
    "rpigpio": "gpiozero.pins.rpigpio:RPiGPIOFactory",
    "pigpio": "gpiozero.pins.pigpio:PiGPIOFactory",
    "native": "gpiozero.pins.native:NativeFactory",
    "mock": "gpiozero.pins.mock:MockFactory",
}


def build_pin_factory(hardware: GpioHardware | MockHardware) -> Any:
    """Build the configured gpiozero pin factory; raise :class:`HardwareError` if it can't.

    Never falls back to another factory: on a Pi with a missing driver the agent stops.
    """
    name = hardware.pin_factory if isinstance(hardware, GpioHardware) else "mock"
    module_name, _, class_name = PIN_FACTORIES[name].partition(":")
    try:
        factory_class = getattr(importlib.import_module(module_name), class_name)
        return factory_class()
    except ImportError as exc:
        hint = " (install the 'pi' extra: pip install 'curbside[pi]')" if name == "lgpio" else ""
        raise HardwareError(f"pin factory {name!r} is not installed: {exc}{hint}") from exc
    except Exception as exc:  # gpiozero raises many kinds here (BadPinFactory, OSError...)
        raise HardwareError(f"pin factory {name!r} failed to start: {exc}") from exc


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _device_error(what: str, pin: int | str, exc: Exception) -> HardwareError:
    return HardwareError(f"{what} on pin {pin}: {exc}")


class LockOutput:
    """A lock's output pin: a strike's solenoid (energise to unlock) or a maglock's hold
    (energised to lock, released to unlock). Off at start and on close.

    :meth:`pulse` operates the lock for ``seconds`` and a timer thread ends it: the cap
    holds even if the event loop stalls.
    """

    def __init__(self, pin: int | str, pin_factory: Any, *, hold: bool = False) -> None:
        try:
            self._device = DigitalOutputDevice(
                pin, active_high=True, initial_value=False, pin_factory=pin_factory
            )
        except Exception as exc:  # gpiozero's GPIOPinInUse, PinInvalidPin, ...
            raise _device_error("lock output", pin, exc) from exc
        self._hold = hold  # a maglock: idle on (after engage()), pulsed off
        self._timer: threading.Timer | None = None

    @property
    def is_energised(self) -> bool:
        return bool(self._device.value)

    def engage(self) -> None:
        """A maglock starts holding (called once the bank has reconciled at start)."""
        if self._hold:
            self._device.on()

    def pulse(self, seconds: float, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Operate now; a timer thread ends it after ``seconds``.

        The returned future completes on ``loop`` once the lock is back at rest.
        """
        done: asyncio.Future[None] = loop.create_future()
        operate, rest = (self._device.off, self._device.on) if self._hold \
            else (self._device.on, self._device.off)

        def end() -> None:
            try:
                if not self._device.closed:
                    rest()
            finally:  # whatever happened, the waiting unlock (and the coil lock) go on
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(_resolve, done)

        self._timer = threading.Timer(seconds, end)
        self._timer.daemon = True
        operate()
        try:
            self._timer.start()
        except BaseException:  # no thread to end the pulse: do not start it
            rest()
            raise
        return done

    def close(self) -> None:
        """Off (a strike locked, a maglock released) and the pin released. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
        if not self._device.closed:
            self._device.off()
            self._device.close()


class InputSwitch:
    """A switch to ground on an input pin, pull-up on: ``level`` is True while closed
    (a closed door, an engaged lock, an item in place)."""

    def __init__(self, pin: int | str, pin_factory: Any, what: str = "input") -> None:
        try:
            self._device = DigitalInputDevice(pin, pull_up=True, pin_factory=pin_factory)
        except Exception as exc:  # gpiozero's GPIOPinInUse, PinInvalidPin, ...
            raise _device_error(what, pin, exc) from exc

    @property
    def level(self) -> bool:
        # pull_up=True makes gpiozero report "active" when the pin is low.
        return bool(self._device.is_active)

    def on_change(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[[bool], None]
    ) -> None:
        """Call ``callback(level)`` on ``loop`` whenever the switch changes."""
        self._device.when_activated = lambda: loop.call_soon_threadsafe(callback, True)
        self._device.when_deactivated = lambda: loop.call_soon_threadsafe(callback, False)

    def close(self) -> None:
        if not self._device.closed:
            self._device.close()  # also drops the callbacks
