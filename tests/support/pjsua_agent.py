"""One pjsua2 SIP phone per process, controlled by JSON lines (see pjsua_control.py).

Run as `python -m tests.support.pjsua_agent --name N --rtp-port P ...`. pjsua2's Endpoint is a
per-process singleton that must be polled from one thread, so the agent owns the process: it
polls stdin and pjsip in one loop and never blocks in either for long.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import pjsua2 as pj

from tests.support.audio import write_tone_wav

POLL_MS = 10
FINALISE_POLLS = 300
TONE_SECONDS = 2.0
CALL_STATE_NAMES = {
    pj.PJSIP_INV_STATE_NULL: "NULL",
    pj.PJSIP_INV_STATE_CALLING: "CALLING",
    pj.PJSIP_INV_STATE_INCOMING: "INCOMING",
    pj.PJSIP_INV_STATE_EARLY: "EARLY",
    pj.PJSIP_INV_STATE_CONNECTING: "CONNECTING",
    pj.PJSIP_INV_STATE_CONFIRMED: "CONFIRMED",
    pj.PJSIP_INV_STATE_DISCONNECTED: "DISCONNECTED",
}
TRANSPORT_TYPES = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
    "tls": pj.PJSIP_TRANSPORT_TLS,  # a client of self-signed test servers: no verification
}


def wav_is_complete(path: Path) -> bool:
    """True once the RIFF header's size field covers the whole file."""
    try:
        with path.open("rb") as wav:
            header = wav.read(8)
    except FileNotFoundError:
        return False
    return (len(header) == 8 and header[:4] == b"RIFF"
            and int.from_bytes(header[4:], "little") + 8 == path.stat().st_size)


class CommandError(Exception):
    """A command that cannot be carried out; its message goes back to the test."""


class Phone:
    """The endpoint, its accounts and calls, and the media attached to them."""

    def __init__(self, options: argparse.Namespace, emit: Callable[[dict[str, Any]], None]):
        self.options = options
        self.emit = emit
        self.auto_answer: int | None = options.auto_answer
        # Live calls by pjsua call id. pjsua reuses an id once its call has ended (4 slots by
        # default), and a pj.Call wrapper's destructor clears its id's user data and hangs up
        # whatever call then holds that id: ended wrappers must never be dropped while their
        # id is taken by a new call, so they wait in `ended` until release_ended_calls().
        self.calls: dict[int, PhoneCall] = {}
        self.ended: list[PhoneCall] = []
        self.tone_player: pj.AudioMediaPlayer | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.recording_path = Path()
        self.tone_dir = Path(tempfile.mkdtemp(prefix=f"pjsua-{options.name}-"))
        self.endpoint = pj.Endpoint()
        self.endpoint.libCreate()
        config = pj.EpConfig()
        # pjsua2 callbacks must run in this thread, from libHandleEvents, never concurrently.
        config.uaConfig.threadCnt = 0
        config.uaConfig.mainThreadOnly = True
        config.uaConfig.userAgent = f"ws2sip-test-pjsua/{options.name}"
        config.logConfig.level = 5
        config.logConfig.consoleLevel = 0
        config.logConfig.filename = options.pjsip_log
        config.medConfig.hasIoqueue = True
        self.endpoint.libInit(config)
        transport_config = pj.TransportConfig()
        transport_config.port = options.sip_port
        transport_config.boundAddress = "127.0.0.1"
        transport_config.publicAddress = "127.0.0.1"
        self.transport_id = self.endpoint.transportCreate(
            TRANSPORT_TYPES[options.transport], transport_config
        )
        self.endpoint.libStart()
        self.endpoint.audDevManager().setNullDev()
        self.sip_port = int(
            self.endpoint.transportGetInfo(self.transport_id).localName.rsplit(":", 1)[1]
        )
        local_uri = f"sip:{options.name}@127.0.0.1:{self.sip_port}"
        self.local_account = PhoneAccount(self, self.account_config(local_uri))
        self.account: PhoneAccount = self.local_account

    def account_config(self, id_uri: str) -> pj.AccountConfig:
        config = pj.AccountConfig()
        config.idUri = id_uri
        config.sipConfig.transportId = self.transport_id
        media = config.mediaConfig.transportConfig
        media.port = self.options.rtp_port
        # An RTP/RTCP pair needs two ports; a range lets pjsua step past one taken meanwhile.
        media.portRange = 100
        media.boundAddress = "127.0.0.1"
        media.publicAddress = "127.0.0.1"
        return config

    # --- commands -------------------------------------------------------------------------

    def cmd_register(self, host: str, port: int, user: str, password: str, domain: str,
                     transport: str | None = None, expires: int = 300,
                     contact_params: str = "", instance_id: str = "") -> dict[str, Any]:
        """contact_params: appended to the Contact URI (e.g. RFC 8599 ";pn-provider=apns...");
        instance_id: the +sip.instance URN to keep across restarts (an app's own id)."""
        transport = transport or self.options.transport
        server = f"sip:{host}:{port};transport={transport}"
        config = self.account_config(f"sip:{user}@{domain}")
        config.sipConfig.contactUriParams = contact_params
        if instance_id:
            config.natConfig.sipOutboundInstanceId = f"<{instance_id}>"
        config.regConfig.registrarUri = server
        config.regConfig.timeoutSec = expires
        config.regConfig.retryIntervalSec = 0
        config.sipConfig.proxies.append(f"{server};lr")
        config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
        if self.account is not self.local_account:
            self.account.shutdown()
        self.account = PhoneAccount(self, config)
        self.account.setDefault()
        return {"account": f"sip:{user}@{domain}"}

    def cmd_unregister(self) -> dict[str, Any]:
        if self.account is self.local_account:
            raise CommandError("not registered")
        self.account.setRegistration(False)
        return {}

    def cmd_call(self, uri: str, late_offer: bool = False,
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
        call = PhoneCall(self, self.account)
        parameters = pj.CallOpParam(True)
        if late_offer:
            parameters.opt.flag |= pj.PJSUA_CALL_NO_SDP_OFFER
        for name, value in (headers or {}).items():
            header = pj.SipHeader()
            header.hName = name
            header.hValue = value
            parameters.txOption.headers.append(header)
        call.makeCall(uri, parameters)
        if call not in self.ended:  # a call that failed at once is already retired
            self.calls[call.getId()] = call
        return {"call": call.getId()}

    def cmd_answer(self, code: int = 200, call: int | None = None) -> dict[str, Any]:
        parameters = pj.CallOpParam(True)
        parameters.statusCode = code
        self.find_call(call).answer(parameters)
        return {}

    def cmd_reject(self, code: int = 486, call: int | None = None) -> dict[str, Any]:
        return self.cmd_hangup(code=code, call=call)

    def cmd_hangup(self, code: int = 603, call: int | None = None) -> dict[str, Any]:
        # pjsua uses the code only for a call not yet answered; an answered call gets a BYE.
        parameters = pj.CallOpParam(True)
        parameters.statusCode = code
        self.find_call(call).hangup(parameters)
        return {}

    def cmd_send_dtmf(self, digits: str, call: int | None = None) -> dict[str, Any]:
        parameters = pj.CallSendDtmfParam()
        parameters.digits = digits
        parameters.method = pj.PJSUA_DTMF_METHOD_RFC2833
        self.find_call(call).sendDtmf(parameters)
        return {}

    def cmd_play_tone(self, frequency: float) -> dict[str, Any]:
        tone = write_tone_wav(self.tone_dir / f"tone-{frequency:g}.wav", frequency, TONE_SECONDS)
        player = pj.AudioMediaPlayer()
        player.createPlayer(str(tone))  # loops by default
        self.rewire(lambda: setattr(self, "tone_player", player))
        return {"wav": str(tone)}

    def cmd_stop_tone(self) -> dict[str, Any]:
        self.stop_tone()
        return {}

    def cmd_record(self, path: str) -> dict[str, Any]:
        self.stop_recording()
        recorder = pj.AudioMediaRecorder()
        recorder.createRecorder(path)
        self.recording_path = Path(path)
        self.rewire(lambda: setattr(self, "recorder", recorder))
        return {}

    def cmd_stop_recording(self) -> dict[str, Any]:
        self.stop_recording()
        return {}

    def cmd_set_codecs(self, codecs: list[str]) -> dict[str, Any]:
        """Only the named codecs (e.g. ["PCMU", "G722"]), in that order of preference."""
        wanted = [name.upper() for name in codecs]
        enabled = []
        for codec in self.endpoint.codecEnum2():
            name = codec.codecId.split("/", 1)[0].upper()
            priority = 255 - wanted.index(name) if name in wanted else 0
            self.endpoint.codecSetPriority(codec.codecId, priority)
            if priority:
                enabled.append(codec.codecId)
        if not enabled:
            raise CommandError(f"none of {codecs} is available")
        return {"enabled": enabled}

    def cmd_set_auto_answer(self, code: int | None) -> dict[str, Any]:
        self.auto_answer = code
        return {}

    def cmd_calls(self) -> dict[str, Any]:
        return {"calls": [call.describe() for call in self.calls.values()]}

    # --- helpers --------------------------------------------------------------------------

    def find_call(self, call_id: int | None) -> PhoneCall:
        if call_id is None:
            if not self.calls:
                raise CommandError("no call")
            return self.calls[max(self.calls)]
        if call_id not in self.calls:
            raise CommandError(f"no call {call_id}; calls: {sorted(self.calls)}")
        return self.calls[call_id]

    def retire(self, call: PhoneCall) -> None:
        """Move a disconnected call out of the live calls; freed later by release_ended_calls."""
        if self.calls.get(call.getId()) is call:
            del self.calls[call.getId()]
        self.ended.append(call)

    def release_ended_calls(self) -> None:
        """Free ended call wrappers whose id no live call holds (outside pjsua callbacks, when
        pjsua has reset their call slot), so that their destructors touch nothing."""
        self.ended = [call for call in self.ended if call.getId() in self.calls]

    def rewire(self, change: Callable[[], None]) -> None:
        """Swap the tone player or recorder with every call's audio disconnected meanwhile."""
        for call in self.calls.values():
            call.disconnect_media()
        change()
        for call in self.calls.values():
            call.connect_media()

    def stop_tone(self) -> None:
        self.rewire(lambda: setattr(self, "tone_player", None))

    def stop_recording(self) -> None:
        if self.recorder is None:
            return
        # Destroying the recorder is what writes the WAV header, and pjsip's conference bridge
        # does that asynchronously (on its clock thread), so wait until the file is complete.
        self.rewire(lambda: setattr(self, "recorder", None))
        for _ in range(FINALISE_POLLS):
            if wav_is_complete(self.recording_path):
                return
            self.endpoint.libHandleEvents(POLL_MS)
        raise CommandError(f"recorder never finalised {self.recording_path}")

    def shutdown(self) -> None:
        self.endpoint.hangupAllCalls()
        for _ in range(50):
            self.endpoint.libHandleEvents(POLL_MS)
        self.stop_recording()
        self.stop_tone()
        self.calls.clear()
        self.ended.clear()
        self.endpoint.libDestroy()
        shutil.rmtree(self.tone_dir, ignore_errors=True)


class PhoneAccount(pj.Account):
    def __init__(self, phone: Phone, config: pj.AccountConfig) -> None:
        super().__init__()
        self.phone = phone
        self.create(config)

    def onRegState(self, prm: pj.OnRegStateParam) -> None:  # noqa: N802 (pjsua2 callback)
        info = self.getInfo()
        self.phone.emit({"event": "reg_state", "code": prm.code, "reason": prm.reason,
                         "expiration": prm.expiration, "active": info.regIsActive})

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        call = PhoneCall(self.phone, self, prm.callId)
        self.phone.calls[prm.callId] = call
        info = call.getInfo()
        message = prm.rdata.wholeMsg
        self.phone.emit({
            "event": "incoming_call", "call": prm.callId, "from": info.remoteUri,
            "to": info.localUri, "call_id": info.callIdString, "request": message,
            "has_sdp": "\r\n\r\nv=0" in message,
        })
        if self.phone.auto_answer is not None:
            parameters = pj.CallOpParam(True)
            parameters.statusCode = self.phone.auto_answer
            call.answer(parameters)


class PhoneCall(pj.Call):
    def __init__(self, phone: Phone, account: PhoneAccount, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.phone = phone
        self.audio: pj.AudioMedia | None = None

    def describe(self) -> dict[str, Any]:
        info = self.getInfo()
        return {"call": info.id, "state": CALL_STATE_NAMES[info.state],
                "code": info.lastStatusCode, "remote": info.remoteUri}

    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802 (pjsua2 callback)
        info = self.getInfo()
        state = CALL_STATE_NAMES[info.state]
        self.phone.emit({"event": "call_state", "call": info.id, "state": state,
                         "code": info.lastStatusCode, "reason": info.lastReason,
                         "role": "caller" if info.role == pj.PJSIP_ROLE_UAC else "callee"})
        if state == "DISCONNECTED":
            self.disconnect_media()
            self.audio = None
            self.phone.retire(self)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.disconnect_media()
                self.audio = self.getAudioMedia(index)
                self.connect_media()
                stream = self.getStreamInfo(index)
                self.phone.emit({
                    "event": "media_active", "call": info.id, "codec": stream.codecName,
                    "clock_rate": stream.codecClockRate, "remote_rtp": stream.remoteRtpAddress,
                })
                return

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:  # noqa: N802 (pjsua2 callback)
        self.phone.emit({"event": "dtmf", "call": self.getId(), "digit": prm.digit})

    def connect_media(self) -> None:
        if self.audio is None:
            return
        if self.phone.tone_player is not None:
            self.phone.tone_player.startTransmit(self.audio)
        if self.phone.recorder is not None:
            self.audio.startTransmit(self.phone.recorder)

    def disconnect_media(self) -> None:
        if self.audio is None:
            return
        try:
            if self.phone.tone_player is not None:
                self.phone.tone_player.stopTransmit(self.audio)
            if self.phone.recorder is not None:
                self.audio.stopTransmit(self.phone.recorder)
        except pj.Error as error:
            # A re-INVITE (hold, resume) may have replaced the stream: its conference port is
            # gone and with it every connection, which is what disconnecting wanted.
            if "PJ_EINVAL" not in error.reason:
                raise


def json_output() -> TextIO:
    """A private copy of stdout for JSON, with fd 1 pointed at stderr for any native prints."""
    json_stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return json_stream


def serve(phone: Phone, emit: Callable[[dict[str, Any]], None]) -> None:
    stdin_fd = sys.stdin.fileno()
    pending = b""
    while True:
        readable, _, _ = select.select([stdin_fd], [], [], 0)
        if readable:
            chunk = os.read(stdin_fd, 65536)
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip() and handle(phone, json.loads(line), emit):
                    return
        phone.endpoint.libHandleEvents(POLL_MS)
        phone.release_ended_calls()


def handle(phone: Phone, request: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> bool:
    """Run one command; True when the agent should exit."""
    request_id = request.pop("id")
    command = request.pop("cmd")
    if command == "quit":
        emit({"id": request_id, "ok": True})
        return True
    method = getattr(phone, f"cmd_{command}", None)
    if method is None:
        emit({"id": request_id, "ok": False, "error": f"unknown command {command!r}"})
        return False
    try:
        emit({"id": request_id, "ok": True, **method(**request)})
    except (CommandError, pj.Error, TypeError, ValueError) as error:
        reason = f"{error.title}: {error.reason}" if isinstance(error, pj.Error) else str(error)
        emit({"id": request_id, "ok": False, "error": f"{command}: {reason}"})
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--rtp-port", type=int, required=True)
    parser.add_argument("--sip-port", type=int, default=0)
    parser.add_argument("--transport", choices=sorted(TRANSPORT_TYPES), default="udp")
    parser.add_argument("--auto-answer", type=int, default=None)
    parser.add_argument("--pjsip-log", required=True)
    options = parser.parse_args()
    output = json_output()

    def emit(message: dict[str, Any]) -> None:
        output.write(json.dumps(message) + "\n")

    phone = Phone(options, emit)
    contact = f"sip:{options.name}@127.0.0.1:{phone.sip_port};transport={options.transport}"
    emit({"event": "ready", "sip_port": phone.sip_port, "transport": options.transport,
          "contact": contact})
    try:
        serve(phone, emit)
    finally:
        phone.shutdown()


if __name__ == "__main__":
    main()
