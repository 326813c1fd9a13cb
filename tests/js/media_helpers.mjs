// In-page media probes for the browser tests: what frequency does a stream carry, and what does
// an RTCPeerConnection report about ICE, DTLS and packets. Exposed as window.ws2sipMedia.

const FFT_SIZE = 8192;
const LISTEN_MS = 1500;
const FRAME_MS = 100;
const MIN_HZ = 50;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Chromium delivers a remote WebRTC track to Web Audio only while a media element plays it.
function keepFlowing(stream) {
  const element = new Audio();
  element.muted = true;
  element.srcObject = stream;
  element.play().catch(() => {});
  return element;
}

// Dominant frequency (Hz) of the stream's audio, from the power spectrum summed over
// LISTEN_MS of AnalyserNode frames; 0 when the stream is silent.
async function dominantFrequency(stream, listenMs = LISTEN_MS) {
  const element = keepFlowing(stream);
  const context = new AudioContext();
  await context.resume();
  const analyser = context.createAnalyser();
  analyser.fftSize = FFT_SIZE;
  analyser.smoothingTimeConstant = 0;
  context.createMediaStreamSource(stream).connect(analyser);
  const decibels = new Float32Array(analyser.frequencyBinCount);
  const power = new Float64Array(analyser.frequencyBinCount);
  const hzPerBin = context.sampleRate / FFT_SIZE;
  try {
    for (let elapsed = 0; elapsed < listenMs; elapsed += FRAME_MS) {
      await sleep(FRAME_MS);
      analyser.getFloatFrequencyData(decibels);
      decibels.forEach((db, bin) => {
        if (Number.isFinite(db)) power[bin] += 10 ** (db / 10);
      });
    }
  } finally {
    element.srcObject = null;
    await context.close();
  }
  let peak = 0;
  let peakBin = -1;
  power.forEach((value, bin) => {
    if (bin * hzPerBin >= MIN_HZ && value > peak) {
      peak = value;
      peakBin = bin;
    }
  });
  // A silent stream still has a -100 dB noise floor in every bin; demand a clear peak.
  const mean = power.reduce((sum, value) => sum + value, 0) / power.length;
  return peakBin < 0 || peak < 100 * mean ? 0 : peakBin * hzPerBin;
}

// ICE / DTLS / RTP facts of a peer connection, from getStats().
async function stats(pc) {
  const report = await pc.getStats();
  const facts = {
    iceConnectionState: pc.iceConnectionState,
    connectionState: pc.connectionState,
    dtlsState: null,
    selectedPair: null,
    packetsReceived: 0,
    packetsSent: 0,
    bytesReceived: 0,
    inboundCodec: null,
  };
  const byId = new Map();
  report.forEach((entry) => byId.set(entry.id, entry));
  report.forEach((entry) => {
    if (entry.type === "transport") {
      facts.dtlsState = entry.dtlsState;
      const pair = byId.get(entry.selectedCandidatePairId);
      if (pair) {
        const local = byId.get(pair.localCandidateId);
        const remote = byId.get(pair.remoteCandidateId);
        facts.selectedPair = {
          state: pair.state,
          local: local ? `${local.address}:${local.port}/${local.protocol}` : null,
          remote: remote ? `${remote.address}:${remote.port}/${remote.protocol}` : null,
          // "host" | "srflx" | "prflx" | "relay"; relayProtocol: how a relay candidate reaches
          // its TURN server (udp | tcp | tls).
          localType: local?.candidateType ?? null,
          relayProtocol: local?.relayProtocol ?? null,
          remoteType: remote?.candidateType ?? null,
        };
      }
    } else if (entry.type === "inbound-rtp" && entry.kind === "audio") {
      facts.packetsReceived += entry.packetsReceived ?? 0;
      facts.bytesReceived += entry.bytesReceived ?? 0;
      const codec = byId.get(entry.codecId);
      if (codec) facts.inboundCodec = codec.mimeType;
    } else if (entry.type === "outbound-rtp" && entry.kind === "audio") {
      facts.packetsSent += entry.packetsSent ?? 0;
    }
  });
  return facts;
}

// Resolves once ICE gathering is complete, so the local description holds every candidate
// (the tests exchange whole SDPs instead of trickling candidates).
function gatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

window.ws2sipMedia = { dominantFrequency, stats, gatheringComplete, keepFlowing };
