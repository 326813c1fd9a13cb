"""bench/media_load.py --transcode runs end to end: real relay process, real ICE/DTLS-SRTP legs,
every call transcoded Opus <-> PCMU, and the tone check hears each side's tone after the
relay's decode/encode."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "media_load.py"


def test_transcoded_calls_are_measured_and_their_tones_heard() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--relay", "ws2sip", "--transcode", "--calls", "2",
         "--seconds", "2", "--no-pin"],
        capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "the phone hears 1000 Hz" in output, output
    assert "the browser hears 400 Hz" in output, output
    assert "tone heard both ways" in output, output
    # The step row: 2 calls, both measured, and packets arrived in both transcoded directions
    # (a loss of 100 % would mean the position-based counting found nothing).
    row = next(line for line in output.splitlines() if re.match(r"\s+2\s+2\s", line))
    losses = re.findall(r"(\d+\.\d+)%", row)
    assert len(losses) >= 4, row
    to_phone_loss, to_browser_loss = float(losses[1]), float(losses[2])
    assert to_phone_loss < 5 and to_browser_loss < 5, row


def test_transcoding_is_refused_with_rtpengine() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--relay", "rtpengine", "--transcode"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "--transcode needs --relay ws2sip" in run.stderr
