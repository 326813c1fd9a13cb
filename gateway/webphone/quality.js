// The live quality line: packets lost, jitter and round-trip time of the audio, and the path
// the media took (direct UDP, TCP or a TURN relay), from getStats().

export async function audioQuality(pc) {
  const report = await pc.getStats();
  const quality = {
    packetsLost: 0, jitterMs: null, rttMs: null, packetsReceived: 0, path: null,
  };
  let pairRttMs = null;
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
    } else if (entry.type === "transport") {
      const pair = byId.get(entry.selectedCandidatePairId);
      // Before the first RTCP receiver report, ICE consent checks already measure the RTT.
      if (pair?.currentRoundTripTime !== undefined) {
        pairRttMs = pair.currentRoundTripTime * 1000;
      }
      quality.path = mediaPath(byId.get(pair?.localCandidateId)) ?? quality.path;
    }
  });
  if (quality.rttMs === null) quality.rttMs = pairRttMs;
  return quality;
}

// How this browser's end of the selected candidate pair carries the media: its own address
// over UDP or TCP (ICE-TCP), or a TURN relay reached over UDP, TCP or TLS.
export function mediaPath(localCandidate) {
  if (!localCandidate) return null;
  if (localCandidate.candidateType === "relay") {
    return `relay (${(localCandidate.relayProtocol ?? "udp").toUpperCase()})`;
  }
  return localCandidate.protocol === "tcp" ? "TCP" : "direct UDP";
}

export function describeQuality({ packetsLost, jitterMs, rttMs, path }) {
  const ms = (value) => (value === null ? "–" : `${Math.round(value)} ms`);
  const line = `Packets lost ${packetsLost} · jitter ${ms(jitterMs)} · RTT ${ms(rttMs)}`;
  return path === null ? line : `${line} · via ${path}`;
}
