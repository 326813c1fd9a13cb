// The live quality line: packets lost, jitter and round-trip time of the audio, from getStats().

export async function audioQuality(pc) {
  const report = await pc.getStats();
  const quality = { packetsLost: 0, jitterMs: null, rttMs: null, packetsReceived: 0 };
  const byId = new Map();
  report.forEach((entry) => byId.set(entry.id, entry));
  report.forEach((entry) => {
    if (entry.type === "inbound-rtp" && entry.kind === "audio") {
      quality.packetsLost += entry.packetsLost ?? 0;
      quality.packetsReceived += entry.packetsReceived ?? 0;
      if (entry.jitter !== undefined) quality.jitterMs = entry.jitter * 1000;
    } else if (entry.type === "remote-inbound-rtp" && entry.kind === "audio" &&
               entry.roundTripTime !== undefined) {
      quality.rttMs = entry.roundTripTime * 1000;
    } else if (entry.type === "transport" && quality.rttMs === null) {
      // Before the first RTCP receiver report, ICE consent checks already measure the RTT.
      const pair = byId.get(entry.selectedCandidatePairId);
      if (pair?.currentRoundTripTime !== undefined) {
        quality.rttMs = pair.currentRoundTripTime * 1000;
      }
    }
  });
  return quality;
}

export function describeQuality({ packetsLost, jitterMs, rttMs }) {
  const ms = (value) => (value === null ? "–" : `${Math.round(value)} ms`);
  return `Packets lost ${packetsLost} · jitter ${ms(jitterMs)} · RTT ${ms(rttMs)}`;
}
