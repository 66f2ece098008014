"""The host's bridge session on a fake clock: handshake, retries, duplicates, link state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.bridge_codec import (
    Ack,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    InputChanged,
    Inputs,
    Message,
    MessageType,
    Pulse,
    ReadInputs,
    Role,
    SetOutput,
    Status,
    decode_message,
    encode_frame,
    encode_message,
)
from firmware_bridge.bridge_session import (
    Answered,
    BridgeSession,
    GaveUp,
    LinkDown,
    LinkUp,
    PeerInfo,
    SessionEvent,
)

MCU_BOOT = 0x5EED0042
NEW_BOOT = 0x0BADCAFE


def mcu_hello(boot_id: int = MCU_BOOT, seq: int = 0, protocol: int = 1) -> bytes:
    return encode_message(Hello(Role.MCU, boot_id, 16, 8, 3000, "fw 1.0", protocol), seq)


def ack(acked: MessageType, seq: int, status: Status = Status.OK, command_id: int = 0,
        value: int = 0) -> bytes:
    return encode_message(Ack(acked, status, command_id, value), seq)


class Host:
    """A session, the fake clock, and what it sent, decoded."""

    def __init__(self, **options: float) -> None:
        self.now = 0.0
        self.session = BridgeSession(boot_id=0x1A2B3C4D, now=0.0, **options)  # type: ignore[arg-type]
        self.decoder = FrameDecoder()

    def at(self, now: float) -> list[tuple[Message, int]]:
        """Advance the clock to ``now``, run the timers; the frames sent."""
        self.now = now
        self.session.tick(now)
        return self.sent()

    def feed(self, data: bytes) -> list[tuple[Message, int]]:
        self.session.receive_data(data, self.now)
        return self.sent()

    def sent(self) -> list[tuple[Message, int]]:
        frames = self.decoder.feed(self.session.data_to_send())
        return [(decode_message(f), f.seq) for f in frames if isinstance(f, Frame)]

    def events(self) -> list[SessionEvent]:
        return self.session.events()


def is_up(host: Host) -> bool:
    return host.session.link_up


def of_type(sent: list[tuple[Message, int]], kind: type[Message]) -> list[tuple[Message, int]]:
    return [(m, seq) for m, seq in sent if isinstance(m, kind)]


def linked(**options: float) -> Host:
    """A host whose link to an MCU (boot id MCU_BOOT) is up at t = 0."""
    host = Host(**options)
    [(_, seq)] = of_type(host.at(0.0), Hello)
    sent = host.feed(ack(MessageType.HELLO, seq) + mcu_hello())
    # The MCU's HELLO was new to the host, which says HELLO again for it.
    [(_, seq)] = of_type(sent, Hello)
    host.feed(ack(MessageType.HELLO, seq))
    assert is_up(host)
    host.events()
    return host


def test_at_start_the_host_ends_any_partial_frame_and_says_hello_and_heartbeat() -> None:
    host = Host()
    host.session.tick(0.0)
    data = host.session.data_to_send()
    assert data.startswith(b"\x00")
    sent = [decode_message(f) for f in FrameDecoder().feed(data) if isinstance(f, Frame)]
    assert sent == [Heartbeat(0x1A2B3C4D, 0),
                    Hello(Role.HOST, 0x1A2B3C4D, firmware="curbside-host")]


def test_link_comes_up_once_our_hello_is_acked_and_the_mcu_said_hello() -> None:
    host = Host()
    [(_, seq)] = of_type(host.at(0.0), Hello)
    replies = host.feed(mcu_hello(seq=0))
    assert replies[0] == (Ack(MessageType.HELLO, Status.OK), 0)
    assert not is_up(host)  # our HELLO is not acknowledged yet
    host.feed(ack(MessageType.HELLO, seq))
    assert is_up(host)
    peer = PeerInfo(MCU_BOOT, 16, 8, 3000, "fw 1.0")
    assert host.events() == [LinkUp(peer, restarted=False)]
    assert host.session.peer == peer


def test_a_hello_from_an_mcu_the_host_did_not_know_gets_the_hosts_hello_again() -> None:
    host = Host()
    [(_, seq)] = of_type(host.at(0.0), Hello)
    assert host.feed(ack(MessageType.HELLO, seq)) == []
    assert not is_up(host)  # the MCU's HELLO is still missing
    replies = host.feed(mcu_hello(seq=0))
    assert replies == [(Ack(MessageType.HELLO, Status.OK), 0), (host.session.hello, seq + 1)]
    assert not is_up(host)  # the MCU may have booted after our first HELLO
    host.feed(ack(MessageType.HELLO, seq + 1))
    assert is_up(host)


def test_an_unanswered_command_is_resent_with_the_same_seq_then_given_up_and_the_link_goes_down(
) -> None:
    host = linked()
    ticket = host.session.send(Pulse(7, 3, 500), host.now)
    [(first, seq)] = host.sent()
    assert first == Pulse(7, 3, 500)
    resent = []
    for step in (0.1, 0.21, 0.32):
        resent += [s for s in host.at(step) if isinstance(s[0], Pulse)]
    assert resent == [(first, seq)] * 3
    assert host.events() == []
    host.at(0.45)
    reason = f"no answer to PULSE seq {seq} after 3 retries"
    assert host.events() == [GaveUp(ticket, reason), LinkDown(reason)]
    assert not is_up(host)
    assert host.session.stats.retries == 3
    assert host.session.stats.gave_up == 1


def test_an_answer_to_a_retry_completes_the_command_and_a_late_one_is_stale() -> None:
    host = linked()
    ticket = host.session.send(Pulse(7, 3, 500), host.now)
    [(_, seq)] = host.sent()
    host.at(0.1)  # resent once
    host.feed(ack(MessageType.PULSE, seq, Status.OK, 7, 500))
    assert host.events() == [Answered(ticket, Ack(MessageType.PULSE, Status.OK, 7, 500))]
    host.feed(ack(MessageType.PULSE, seq, Status.OK, 7, 500))  # the ACK of the first send
    assert host.events() == []
    assert host.session.stats.stale_answers == 1


def test_commands_are_sent_one_at_a_time_in_order() -> None:
    host = linked()
    first = host.session.send(SetOutput(1, 0, True), host.now)
    second = host.session.send(ReadInputs(), host.now)
    [(message, seq)] = host.sent()
    assert message == SetOutput(1, 0, True)
    assert host.feed(ack(MessageType.SET_OUTPUT, seq, command_id=1)) == [(ReadInputs(), seq + 1)]
    host.feed(encode_message(Inputs((True, False)), seq + 1))
    assert host.events() == [Answered(first, Ack(MessageType.SET_OUTPUT, Status.OK, 1)),
                             Answered(second, Inputs((True, False)))]


def test_a_repeated_input_change_is_acked_again_but_reported_once() -> None:
    host = linked()
    change = encode_message(InputChanged(4, True, 1234), 5)
    first = host.feed(change)
    assert first == [(Ack(MessageType.INPUT_CHANGED, Status.OK), 5)]
    assert host.feed(change) == first  # our ACK was lost: the MCU retried the same seq
    assert host.events() == [InputChanged(4, True, 1234)]
    assert host.session.stats.duplicates == 1


def test_a_change_resent_under_a_new_seq_after_a_link_loss_is_reported_once() -> None:
    host = linked()
    host.feed(encode_message(InputChanged(4, True, 1234), 5))
    assert host.feed(encode_message(InputChanged(4, True, 1234), 9)) == [
        (Ack(MessageType.INPUT_CHANGED, Status.OK), 9)]
    host.feed(encode_message(InputChanged(4, False, 1500), 10))
    assert host.events() == [InputChanged(4, True, 1234), InputChanged(4, False, 1500)]


def test_heartbeats_keep_the_link_up_and_silence_takes_it_down() -> None:
    host = linked()
    beats = 0
    for step in range(1, 21):  # 10 s of MCU heartbeats every 0.5 s
        host.now = step * 0.5
        host.feed(encode_message(Heartbeat(MCU_BOOT, step * 500), 0))
        beats += len(of_type(host.at(host.now), Heartbeat))
    assert is_up(host)
    assert beats == 20  # the host's own, one per period
    assert host.events() == []
    ticket = host.session.send(SetOutput(2, 1, True), host.now)
    host.feed(ack(MessageType.SET_OUTPUT, host.sent()[0][1], command_id=2))
    assert host.session.next_deadline() <= 10.0 + 0.5
    host.at(11.99)
    assert is_up(host)
    host.at(12.0)
    assert host.events() == [Answered(ticket, Ack(MessageType.SET_OUTPUT, Status.OK, 2)),
                             LinkDown("no frame from the MCU for 2 s")]


def test_after_a_link_loss_the_host_says_hello_again_and_the_same_mcu_is_not_restarted() -> None:
    host = linked()
    host.at(2.0)
    assert host.events() == [LinkDown("no frame from the MCU for 2 s")]
    hellos = of_type(host.at(2.5), Hello)
    assert hellos  # it keeps saying HELLO while the link is down
    host.feed(encode_message(Heartbeat(MCU_BOOT, 2600), 0))
    host.feed(ack(MessageType.HELLO, hellos[-1][1]))
    assert host.events() == [LinkUp(PeerInfo(MCU_BOOT, 16, 8, 3000, "fw 1.0"), restarted=False)]


def test_a_new_mcu_boot_id_takes_the_link_down_fails_the_command_and_relinks_as_restarted() -> None:
    host = linked()
    ticket = host.session.send(Pulse(9, 1, 200), host.now)
    host.sent()
    replies = host.feed(mcu_hello(NEW_BOOT, seq=0))
    assert (Ack(MessageType.HELLO, Status.OK), 0) in replies
    assert host.events() == [GaveUp(ticket, "the MCU restarted"), LinkDown("the MCU restarted")]
    [(_, seq)] = of_type(replies + host.at(host.now), Hello)  # our HELLO for the new MCU
    host.feed(ack(MessageType.HELLO, seq))
    [up] = host.events()
    assert up == LinkUp(PeerInfo(NEW_BOOT, 16, 8, 3000, "fw 1.0"), restarted=True)
    assert host.session.stats.peer_restarts == 1


def test_a_heartbeat_with_a_new_boot_id_is_a_restart_even_if_its_hello_was_lost() -> None:
    host = linked()
    host.feed(encode_message(InputChanged(0, True, 10), 1))
    host.feed(encode_message(Heartbeat(NEW_BOOT, 5), 0))
    assert host.events()[-1] == LinkDown("the MCU restarted")
    # The new MCU numbers from 0 again: seq 1 is a new message, not a duplicate.
    host.feed(mcu_hello(NEW_BOOT, seq=0) + encode_message(InputChanged(0, True, 10), 1))
    assert InputChanged(0, True, 10) in host.events()


def test_a_command_while_the_link_is_down_fails_at_once() -> None:
    host = Host()
    ticket = host.session.send(Pulse(1, 0, 100), 0.0)
    assert host.events() == [GaveUp(ticket, "link is down")]
    assert of_type(host.at(0.0), Pulse) == []


def test_the_host_refuses_commands_and_unknown_types_and_malformed_payloads() -> None:
    host = linked()
    assert host.feed(encode_message(Pulse(1, 0, 100), 3)) == [
        (Ack(MessageType.PULSE, Status.UNKNOWN_TYPE), 3)]
    assert host.feed(encode_frame(0x7E, 4, b"")) == [(Ack(0x7E, Status.UNKNOWN_TYPE), 4)]
    assert host.feed(encode_frame(MessageType.INPUT_CHANGED, 5, b"\x01")) == [
        (Ack(MessageType.INPUT_CHANGED, Status.BAD_LENGTH), 5)]
    assert host.feed(encode_frame(MessageType.HEARTBEAT, 0, b"\x01")) == []  # never answered
    assert host.session.stats.errors == {"unknown_type": 2, "bad_payload": 2}
    assert host.events() == []


def test_a_hello_of_another_protocol_version_is_refused_and_no_link_comes_up() -> None:
    host = Host()
    [(_, seq)] = of_type(host.at(0.0), Hello)
    host.feed(ack(MessageType.HELLO, seq))
    assert host.feed(mcu_hello(protocol=2)) == [
        (Ack(MessageType.HELLO, Status.UNSUPPORTED_VERSION), 0)]
    assert not is_up(host)


def test_a_hello_left_unanswered_is_said_again_until_someone_answers() -> None:
    host = Host()
    times = [step / 20 for step in range(41)]  # 2 s
    hellos = [seq for t in times for m, seq in host.at(t) if isinstance(m, Hello)]
    assert len(hellos) >= 8
    assert len(set(hellos)) >= 2  # a new HELLO after each give-up
    assert host.events() == []  # no link yet: nothing to report down


@given(st.lists(st.binary(max_size=80), max_size=20))
def test_arbitrary_bytes_never_crash_the_session(chunks: list[bytes]) -> None:
    host = linked()
    for index, chunk in enumerate(chunks):
        host.now = index * 0.05
        host.session.receive_data(chunk, host.now)
        host.session.tick(host.now)
        host.session.data_to_send()
    for event in host.events():
        assert isinstance(event, LinkUp | LinkDown | InputChanged | Answered | GaveUp)
