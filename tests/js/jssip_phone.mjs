// A bare JsSIP phone for the transfer and call-waiting tests (no project UI): several calls at
// once, hold, blind and attended transfer (REFER, REFER with Replaces) out and in. Exposed as
// window.ws2sipJssip; the test reads window.ws2sipJssip.events and each referral's NOTIFYs.
//
// Calls are numbered in the order the UA meets them (outgoing, incoming, and those JsSIP makes
// itself for a REFER or an INVITE with Replaces). Incoming calls wait for answer(), except an
// INVITE with Replaces, which takes its call's place at once.

// No ICE servers: JsSIP's default STUN server is on the Internet, and waiting for it holds
// every INVITE and answer back until ICE gathering times out.
const AUDIO_ONLY = { mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers: [] } };

const calls = [];
const events = [];
const referrals = [];
let ua = null;

let autoAnswer = false;

// `at` is Date.now(): the same clock as the phones' and the gateway's logs (bench/).
function note(type, details = {}) {
  events.push({ type, at: Date.now(), ...details });
}

function track(session, originator, request) {
  const index = calls.length;
  const entry = { session, remoteStream: new MediaStream(), index };
  calls.push(entry);
  const listen = (pc) => {
    pc.addEventListener('track', (e) => entry.remoteStream.addTrack(e.track));
    entry.pc = pc;
  };
  if (session.connection) listen(session.connection);
  session.on('peerconnection', ({ peerconnection }) => listen(peerconnection));
  // The peer's own Contact (its remote target), which SIP.js and pjsua put in a Refer-To.
  if (originator === 'remote') entry.remoteContact = request.parseHeader('contact').uri.toString();
  session.on('accepted', ({ response }) => {
    if (response) entry.remoteContact = response.parseHeader('contact').uri.toString();
    note('accepted', { index });
  });
  session.on('confirmed', () => note('confirmed', { index }));
  session.on('ended', (e) => note('ended', { index, originator: e.originator, cause: e.cause }));
  session.on('failed', (e) => note('failed', { index, originator: e.originator, cause: e.cause }));
  // JsSIP sends its offer or answer once ICE gathering completes, and Chromium's gathering on
  // this machine's other interfaces sometimes takes over 20 s. Media stays on loopback here:
  // the loopback UDP host candidate is all the SDP needs.
  session.on('icecandidate', (e) => {
    if (/ udp \d+ 127\.0\.0\.1 /i.test(e.candidate.candidate)) e.ready();
  });
  session.on('hold', (e) => note('hold', { index, originator: e.originator }));
  session.on('unhold', (e) => note('unhold', { index, originator: e.originator }));
  session.on('refer', (e) => {
    note('refer', { index, target: e.request.refer_to.uri.toString() });
    e.accept(() => {}, { ...AUDIO_ONLY });
  });
  session.on('replaces', (e) => {
    note('replaces', { index });
    e.accept();
  });
  const replacing = originator === 'remote' && request.hasHeader('replaces');
  note('call', { index, originator, replacing, from: request.from.uri.toString() });
  // Answered once JsSIP has finished setting the incoming call up.
  if (originator === 'remote' && (replacing || autoAnswer)) {
    setTimeout(() => session.answer({ ...AUDIO_ONLY }), 0);
  }
}

// `settings`: more JsSIP UA settings (e.g. connection_recovery_min_interval / _max_interval,
// which bound how soon JsSIP reconnects by itself after its WebSocket closed).
function start(wsUrl, user, password, domain, settings = {}) {
  ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(wsUrl)], uri: `sip:${user}@${domain}`, password,
    ...settings,
  });
  ua.on('newRTCSession', (e) => track(e.session, e.originator, e.request));
  // The transport's and the registration's life, for tests of reconnection (a node that dies).
  ua.on('connected', () => note('connected'));
  ua.on('disconnected', (e) => note('disconnected', { code: e.code ?? null, error: Boolean(e.error) }));
  ua.on('registered', () => note('registered'));
  ua.on('unregistered', () => note('unregistered'));
  ua.on('registrationFailed', (e) => note('registrationFailed', { cause: e.cause }));
  return new Promise((registered, failed) => {
    ua.on('registered', () => registered());
    ua.on('registrationFailed', (e) => failed(new Error(`REGISTER failed: ${e.cause}`)));
    ua.start();
  });
}

function call(target) {
  ua.call(target, { ...AUDIO_ONLY });
  return calls.length - 1;
}

function session(index) {
  const entry = calls[index];
  if (!entry) throw new Error(`no call ${index} (${calls.length} calls)`);
  return entry.session;
}

// Blind transfer (target a URI) or attended (replacesIndex: the call whose peer takes over;
// target null: that peer's own Contact, as SIP.js writes it). Returns the referral's number;
// its NOTIFYs' status lines land in referrals[number].
function refer(index, target, replacesIndex = null) {
  if (target === null) target = calls[replacesIndex].remoteContact;
  const number = referrals.length;
  const notifies = [];
  referrals.push(notifies);
  const options = {
    eventHandlers: {
      requestSucceeded: ({ response }) => note('referAccepted', { number, status: response.status_code }),
      requestFailed: ({ response, cause }) => note('referFailed', { number, status: response ? response.status_code : 0, cause }),
      trying: ({ request }) => notifies.push(request.body.trim().split('\r\n', 1)[0]),
      progress: ({ request }) => notifies.push(request.body.trim().split('\r\n', 1)[0]),
      accepted: ({ request }) => {
        notifies.push(request.body.trim().split('\r\n', 1)[0]);
        note('transferred', { number });
      },
      failed: ({ request }) => {
        notifies.push(request.body.trim().split('\r\n', 1)[0]);
        note('transferFailed', { number });
      },
    },
  };
  if (replacesIndex !== null) options.replaces = session(replacesIndex);
  note('referSent', { number });
  session(index).refer(target, options);
  return number;
}

// Date.now() when call `index` (which may not exist yet) first carries a clear toneHz,
// polling a small-FFT AnalyserNode every 5 ms as bench/dial_to_audio.py does; null on timeout.
async function firstHeard(index, toneHz, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!(calls[index] && calls[index].remoteStream.getAudioTracks().length)) {
    if (Date.now() > deadline) return null;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const stream = calls[index].remoteStream;
  const element = window.ws2sipMedia.keepFlowing(stream);
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  analyser.smoothingTimeConstant = 0;
  context.createMediaStreamSource(stream).connect(analyser);
  const bins = new Float32Array(analyser.frequencyBinCount);
  const hzPerBin = context.sampleRate / analyser.fftSize;
  try {
    while (Date.now() < deadline) {
      analyser.getFloatFrequencyData(bins);
      let peak = -Infinity;
      let peakBin = 0;
      let sum = 0;
      bins.forEach((db, bin) => {
        sum += 10 ** (db / 10);
        if (bin * hzPerBin >= 50 && db > peak) { peak = db; peakBin = bin; }
      });
      const clear = 10 ** (peak / 10) > 100 * (sum / bins.length);
      if (clear && Math.abs(peakBin * hzPerBin - toneHz) <= 2 * hzPerBin) return Date.now();
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    return null;
  } finally {
    element.srcObject = null;
    await context.close();
  }
}

function heard(index, listenMs) {
  return window.ws2sipMedia.dominantFrequency(calls[index].remoteStream, listenMs);
}

window.ws2sipJssip = {
  start,
  call,
  refer,
  heard,
  firstHeard,
  setAutoAnswer: (on) => { autoAnswer = on; },
  answer: (index) => session(index).answer({ ...AUDIO_ONLY }),
  hangUp: (index) => session(index).terminate(),
  hold: (index) => session(index).hold(),
  unhold: (index) => session(index).unhold(),
  stats: (index) => window.ws2sipMedia.stats(calls[index].pc),
  calls,
  events,
  referrals,
};
