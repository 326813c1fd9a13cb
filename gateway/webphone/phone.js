// The web phone: sign in, call, answer, hang up, keypad (DTMF), mute, hold, video, call timer
// and a live quality line; a second call (call waiting, hold-and-swap), blind and attended
// transfer, a voicemail indicator (MWI) and contacts with busy lamps. On top of JsSIP talking
// SIP over the gateway's WebSocket.
import JsSIP from "jssip";

import {
  CONTACTS_KEY,
  ContactList,
  MESSAGE_SUMMARY,
  VOICEMAIL_KEY,
  parseContacts,
  parseMessageSummary,
  pidf,
} from "./contacts.js";
import {
  MEDIA_BLOCKED, callFailure, mediaFailure, registrationFailure,
} from "./messages.js";
import { audioQuality, describeQuality } from "./quality.js";
import { Ringer } from "./ringer.js";
import { fetchSettings, isStale } from "./settings.js";

const QUALITY_INTERVAL_MS = 1000;
const TIMER_INTERVAL_MS = 1000;
// RFC 4733 telephone-events in the media, what PBXs and the gateway's media relay expect.
const DTMF_OPTIONS = { transportType: JsSIP.C.DTMF_TRANSPORT.RFC2833 };
const REMEMBERED_USER = "ws2sip.user";
// JsSIP sends the SDP once ICE gathering completes. Where UDP is blocked, a TURN/UDP
// allocation only gives up after ~40 s, so the call would hang in "Calling…" that long. A relay
// candidate is the path of last resort: once one is there (plus a moment for its siblings),
// or after GATHERING_LIMIT_MS, the SDP leaves with what has been gathered.
const RELAY_GRACE_MS = 300;
const GATHERING_LIMIT_MS = 5000;
// An answered call whose ICE has not connected by then has no media path (UDP blocked, no
// reachable TURN relay); Chromium may stay in "checking" for good when nothing was gathered.
const MEDIA_CONNECT_LIMIT_MS = 10_000;
const MWI_EXPIRES = 3600;

const $ = (id) => document.getElementById(id);

// Which controls a state of the current call enables (the second call adds its own, see
// #refreshControls).
const CONTROLS = {
  idle: { call: true, answer: false, hangup: false, mute: false, hold: false },
  calling: { call: false, answer: false, hangup: true, mute: false, hold: false },
  ringing: { call: false, answer: false, hangup: true, mute: false, hold: false },
  incoming: { call: false, answer: true, hangup: true, mute: false, hold: false },
  active: { call: false, answer: false, hangup: true, mute: true, hold: true },
  held: { call: false, answer: false, hangup: true, mute: true, hold: true },
};

// One call: its JsSIP session, who is on the other end, and its own microphone stream.
class Call {
  constructor(session, peer, offer = "") {
    this.session = session;
    this.peer = peer;
    this.offer = offer;
    this.state = "calling";
    this.stream = null;
    this.answeredAt = 0;
    this.iceConnected = false;
    this.mediaBlocked = false;
    this.mediaTimer = null; // gives up on a call whose media never connects
    this.watchedConnection = null;
  }

  get established() {
    return this.state === "active" || this.state === "held";
  }
}

class Phone {
  settings = null;
  ua = null;
  registered = false;
  current = null; // the call shown and heard
  other = null; // a held call, or a second incoming call waiting
  localStream = null;
  remoteStream = null;
  peerConnection = null;
  #ringer = new Ringer();
  #timers = [];
  #contacts = new ContactList($("contact-list"));
  #presenceNotifiers = new Set();
  #voicemail = null;

  // The current call's session (the tests and the console read it).
  get session() {
    return this.current?.session ?? null;
  }

  get peer() {
    return this.current?.peer ?? "";
  }

  async load() {
    $("user").value = localStorage.getItem(REMEMBERED_USER) ?? "";
    $("sign-in-form").addEventListener("submit", (event) => this.signIn(event));
    $("sign-out").addEventListener("click", () => this.signOut());
    $("dial-form").addEventListener("submit", (event) => this.call(event));
    $("answer").addEventListener("click", () => this.answer());
    $("hangup").addEventListener("click", () => this.hangUp());
    $("mute").addEventListener("click", () => this.toggleMute());
    $("hold").addEventListener("click", () => this.toggleHold());
    $("swap").addEventListener("click", () => this.swap());
    $("accept-waiting").addEventListener("click", () => this.acceptWaiting());
    $("reject-waiting").addEventListener("click", () => this.rejectWaiting());
    $("transfer").addEventListener("click", () => this.blindTransfer());
    $("complete-transfer").addEventListener("click", () => this.attendedTransfer());
    $("settings-form").addEventListener("submit", (event) => this.saveSettings(event));
    $("keypad").addEventListener("click", (event) => {
      const digit = event.target.dataset?.digit;
      if (digit) this.pressKey(digit);
    });
    this.#contacts.onPick = (name) => {
      $("target").value = name;
      $("transfer-target").value = name;
    };
    $("contacts-input").value = localStorage.getItem(CONTACTS_KEY) ?? "";
    $("voicemail-uri").value = localStorage.getItem(VOICEMAIL_KEY) ?? "";
    this.#setCallState("idle", "Ready");
    try {
      this.settings = await fetchSettings();
      $("server").value = this.settings.ws_url;
      $("domain").value = this.settings.domain;
    } catch (error) {
      this.#showError(`Cannot load the gateway's settings: ${error.message}`);
    }
  }

  // --- registration ---------------------------------------------------------------------------
  async signIn(event) {
    event.preventDefault();
    this.#clearError();
    const user = $("user").value.trim();
    const server = $("server").value.trim();
    const domain = $("domain").value.trim();
    try {
      this.settings = await fetchSettings({ username: user, password: $("password").value });
    } catch (error) {
      this.#showError(`Cannot load the gateway's settings: ${error.message}`);
      return;
    }
    localStorage.setItem(REMEMBERED_USER, user);
    $("sign-in").disabled = true;
    this.#setRegistration("connecting", "Connecting…");
    let socket;
    try {
      socket = new JsSIP.WebSocketInterface(server);
    } catch (error) {
      this.#failSignIn(`Bad WebSocket URL ${server}: ${error.message}`);
      return;
    }
    const ua = new JsSIP.UA({
      sockets: [socket],
      uri: `sip:${user}@${domain}`,
      password: $("password").value,
      register: true,
      // Calls end when their WebSocket closes (the gateway releases them): no refreshes needed.
      session_timers: false,
      user_agent: `ws2sip-webphone JsSIP/${JsSIP.version}`,
    });
    this.ua = ua;
    ua.on("connecting", () => this.#setRegistration("connecting", "Connecting…"));
    ua.on("disconnected", () => {
      if (this.ua !== ua) return;
      if (this.registered) {
        this.#setRegistration("connecting", "Connection lost, reconnecting…");
      } else {
        this.#failSignIn(`Cannot reach the gateway at ${server}.`);
      }
    });
    ua.on("registered", () => {
      const first = !this.registered;
      this.registered = true;
      this.#setRegistration("registered", `Registered as ${user}@${domain}`);
      $("sign-in-form").hidden = true;
      $("dialer").hidden = false;
      $("sign-in").disabled = false;
      if (first) this.#startSubscriptions();
    });
    ua.on("registrationFailed", (failure) => {
      if (this.ua === ua) this.#failSignIn(registrationFailure(failure, server));
    });
    ua.on("newRTCSession", ({ originator, session, request }) => {
      if (originator === "remote") this.#incoming(session, request);
    });
    // A PBX's unsolicited MWI (Asterisk without a subscription), outside any dialog.
    ua.on("sipEvent", ({ event, request }) => {
      if (event?.event === "message-summary") this.#showVoicemail(request.body);
    });
    ua.on("newSubscribe", ({ event, request }) => this.#answerSubscribe(event, request));
    ua.start();
  }

  signOut() {
    for (const call of [this.current, this.other]) call?.session.terminate();
    this.#stopSubscriptions();
    const ua = this.ua;
    this.ua = null;
    this.registered = false;
    ua?.stop();
    this.#setRegistration("signed-out", "Not signed in");
    $("dialer").hidden = true;
    $("sign-in-form").hidden = false;
  }

  #failSignIn(message) {
    const ua = this.ua;
    this.ua = null;
    this.registered = false;
    ua?.stop();
    this.#showError(message);
    this.#setRegistration("failed", "Not registered");
    $("dialer").hidden = true;
    $("sign-in-form").hidden = false;
    $("sign-in").disabled = false;
  }

  // --- settings: contacts and voicemail ---------------------------------------------------------
  saveSettings(event) {
    event.preventDefault();
    const contacts = parseContacts($("contacts-input").value);
    $("contacts-input").value = contacts.join(", ");
    localStorage.setItem(CONTACTS_KEY, $("contacts-input").value);
    localStorage.setItem(VOICEMAIL_KEY, $("voicemail-uri").value.trim());
    if (this.registered) {
      this.#stopSubscriptions();
      this.#startSubscriptions();
    }
  }

  #startSubscriptions() {
    const domain = $("domain").value.trim();
    this.#contacts.watch(this.ua, domain, parseContacts($("contacts-input").value));
    const mailbox = $("voicemail-uri").value.trim();
    if (!mailbox) return; // unsolicited MWI only
    const target = mailbox.startsWith("sip:") ? mailbox : `sip:${mailbox}@${domain}`;
    const subscriber = this.ua.subscribe(target, "message-summary", MESSAGE_SUMMARY, {
      expires: MWI_EXPIRES, contentType: MESSAGE_SUMMARY,
    });
    subscriber.on("notify", (isFinal, request, body) => {
      if (body) this.#showVoicemail(body);
    });
    subscriber.subscribe();
    this.#voicemail = subscriber;
  }

  #stopSubscriptions() {
    this.#contacts.stop();
    try {
      this.#voicemail?.terminate();
    } catch {
      // Already ended by the PBX.
    }
    this.#voicemail = null;
    for (const notifier of this.#presenceNotifiers) this.#endPresence(notifier);
  }

  // Presence relayed from another user's contacts list: this phone is its own notifier.
  #answerSubscribe(event, request) {
    if (event?.event !== "presence") {
      request.reply(489, "Bad Event");
      return;
    }
    const notifier = this.ua.notify(request, "application/pidf+xml", {});
    notifier.on("subscribe", (isUnsubscribe) => {
      if (isUnsubscribe) this.#endPresence(notifier);
      else notifier.notify(this.#presenceBody());
    });
    notifier.on("terminated", () => this.#presenceNotifiers.delete(notifier));
    this.#presenceNotifiers.add(notifier);
    notifier.start();
  }

  #endPresence(notifier) {
    this.#presenceNotifiers.delete(notifier);
    try {
      notifier.terminate(pidf(this.ua?.configuration.uri.toString() ?? "", false, "Signed out"));
    } catch {
      // Already terminated.
    }
  }

  #presenceBody() {
    const busy = this.current !== null;
    return pidf(this.ua.configuration.uri.toString(), true, busy ? "On the phone" : "Available");
  }

  #publishPresence() {
    for (const notifier of this.#presenceNotifiers) {
      try {
        notifier.notify(this.#presenceBody());
      } catch {
        this.#presenceNotifiers.delete(notifier);
      }
    }
  }

  #showVoicemail(body) {
    const summary = parseMessageSummary(body);
    const badge = $("voicemail");
    badge.dataset.waiting = summary.waiting ? "yes" : "no";
    badge.dataset.newMessages = summary.newMessages;
    const plural = summary.newMessages === 1 ? "" : "s";
    badge.textContent = summary.waiting
      ? `✉ ${summary.newMessages} new voicemail${plural}` : "No new voicemail";
    badge.hidden = false;
  }

  // --- calls ------------------------------------------------------------------------------------
  async call(event) {
    event.preventDefault();
    if (!this.ua || this.other || (this.current && !this.current.established)) return;
    this.#clearError();
    const target = $("target").value.trim();
    if (!target) {
      this.#showError("Type who to call: a user name, a number or sip:user@domain.");
      return;
    }
    if (this.current) {
      // A consultation call (before an attended transfer): the first call waits on hold.
      this.current.session.hold();
      this.other = this.current;
      this.other.state = "held";
      this.current = null;
      this.#showOther();
    }
    const call = new Call(null, target);
    this.current = call;
    $("transfer-status").hidden = true;
    this.#setCallState("calling", `Calling ${target}…`);
    const stream = await this.#openMedia($("with-video").checked);
    if (!stream) {
      this.#drop(call, "Ready");
      return;
    }
    call.stream = stream;
    await this.#refreshSettings();
    if (this.current !== call) {
      // Hung up while the browser was still asking for the microphone.
      stream.getTracks().forEach((track) => track.stop());
      return;
    }
    const session = this.ua.call(target, {
      mediaStream: stream,
      pcConfig: { iceServers: this.settings.ice_servers },
    });
    call.session = session;
    this.#bind(call);
    if (session.connection) this.#watch(session.connection);
  }

  #incoming(session, request) {
    const offer = request.body ?? "";
    const caller = session.remote_identity;
    const peer = caller.display_name || caller.uri.user || caller.uri.toString();
    if (request.hasHeader("replaces")) {
      this.#replacing(session, peer, offer);
      return;
    }
    if (this.other || (this.current && !this.current.established)) {
      session.terminate({ status_code: 486, reason_phrase: "Busy Here" });
      return;
    }
    this.#clearError();
    const call = new Call(session, peer, offer);
    call.state = "incoming";
    this.#bind(call);
    if (this.current) {
      // Call waiting: the first call goes on; this one waits for accept or reject.
      this.other = call;
      this.#showOther();
      this.#refreshControls();
      return;
    }
    this.current = call;
    session.on("peerconnection", ({ peerconnection }) => this.#watchIfCurrent(call,
                                                                            peerconnection));
    this.#setCallState("incoming", `Incoming call from ${peer}`);
    this.#ringer.start();
  }

  // An INVITE with Replaces (attended transfer): it takes over the call it replaces at once.
  async #replacing(session, peer, offer) {
    const replaced = [this.current, this.other].find((call) => call?.session?.isEstablished());
    const stream = await this.#openMedia(false);
    if (!replaced || !stream) {
      session.terminate({ status_code: 481, reason_phrase: "Call Does Not Exist" });
      return;
    }
    const call = new Call(session, peer, offer);
    call.state = "incoming";
    call.stream = stream;
    this.#bind(call);
    if (this.current === replaced) this.current = call;
    else this.other = call;
    session.on("peerconnection", ({ peerconnection }) => this.#watchIfCurrent(call,
                                                                            peerconnection));
    await this.#refreshSettings();
    session.answer({ mediaStream: stream, pcConfig: { iceServers: this.settings.ice_servers } });
  }

  async answer() {
    const call = this.current;
    if (!call || call.state !== "incoming") return;
    this.#ringer.stop();
    await this.#answer(call);
  }

  async #answer(call) {
    const withVideo = $("with-video").checked && /^m=video [1-9]/m.test(call.offer);
    const stream = await this.#openMedia(withVideo);
    if (!stream) {
      call.session.terminate({ status_code: 488, reason_phrase: "No Media Access" });
      return;
    }
    if (call.state !== "incoming") {
      stream.getTracks().forEach((track) => track.stop());
      return;
    }
    call.stream = stream;
    await this.#refreshSettings();
    call.session.answer({
      mediaStream: stream,
      pcConfig: { iceServers: this.settings.ice_servers },
    });
  }

  // Call waiting: hold the current call, answer the waiting one.
  async acceptWaiting() {
    const waiting = this.other;
    if (!waiting || waiting.state !== "incoming" || !this.current) return;
    const held = this.current;
    held.session.hold();
    this.current = waiting;
    this.other = held;
    waiting.session.on("peerconnection", ({ peerconnection }) =>
      this.#watchIfCurrent(waiting, peerconnection));
    this.#setCallState("incoming", `Answering ${waiting.peer}…`);
    this.#showOther();
    await this.#answer(waiting);
  }

  rejectWaiting() {
    const waiting = this.other;
    if (!waiting || waiting.state !== "incoming") return;
    waiting.session.terminate({ status_code: 486, reason_phrase: "Busy Here" });
  }

  // Two calls: the held one comes back, the current one goes on hold.
  swap() {
    const [current, other] = [this.current, this.other];
    if (!current?.established || !other?.established) return;
    current.session.hold();
    other.session.unhold();
    this.current = other;
    this.other = current;
    this.#showCall(other);
    this.#showOther();
  }

  hangUp() {
    const call = this.current;
    if (!call) return;
    if (!call.session) {
      this.#drop(call, "Call ended");
    } else if (call.state === "incoming") {
      call.session.terminate({ status_code: 603, reason_phrase: "Decline" });
    } else {
      call.session.terminate();
    }
  }

  // Blind transfer (REFER): the other party is sent to the typed target; once it reaches the
  // target (NOTIFY 2xx) this phone leaves the call.
  blindTransfer() {
    const call = this.current;
    const target = $("transfer-target").value.trim();
    if (!call?.established) return;
    if (!target) {
      this.#showError("Type whom to transfer to: a user name, a number or sip:user@domain.");
      return;
    }
    this.#refer(call, target, {});
  }

  // Attended transfer (REFER with Replaces, RFC 3891): the held party takes over this
  // consultation call.
  attendedTransfer() {
    const consult = this.current;
    const held = this.other;
    if (!consult?.established || !held?.established) return;
    this.#refer(held, consult.session.remote_identity.uri.toString(),
                { replaces: consult.session }, consult.peer);
  }

  #refer(call, target, options, name = target) {
    this.#setTransfer("trying", `Transferring ${call.peer} to ${name}…`);
    call.session.refer(target, {
      ...options,
      eventHandlers: {
        accepted: () => {
          this.#setTransfer("done", `${call.peer} transferred to ${name}`);
          call.session.terminate();
        },
        failed: () => this.#setTransfer("failed", `Transfer of ${call.peer} failed`),
        requestFailed: () => this.#setTransfer("failed", `Transfer of ${call.peer} refused`),
      },
    });
  }

  toggleMute() {
    if (!this.session) return;
    if (this.session.isMuted().audio) this.session.unmute({ audio: true, video: true });
    else this.session.mute({ audio: true, video: true });
  }

  toggleHold() {
    if (!this.session) return;
    if (this.session.isOnHold().local) this.session.unhold();
    else this.session.hold();
  }

  pressKey(digit) {
    if (this.current?.established) {
      this.session.sendDTMF(digit, DTMF_OPTIONS);
      $("call-status").textContent = `In call with ${this.peer} · sent ${digit}`;
    } else {
      $("target").value += digit;
    }
  }

  #bind(call) {
    const session = call.session;
    let gatheringLimit = null;
    session.on("icecandidate", ({ candidate, ready }) => {
      gatheringLimit ??= setTimeout(ready, GATHERING_LIMIT_MS);
      if (candidate.type === "relay") setTimeout(ready, RELAY_GRACE_MS);
    });
    session.on("sdp", ({ originator }) => {
      if (originator !== "local") return;
      clearTimeout(gatheringLimit);
      gatheringLimit = null;
    });
    if (session.connection) this.#watchIce(call, session.connection);
    session.on("peerconnection", ({ peerconnection }) => this.#watchIce(call, peerconnection));
    const show = (state, text) => {
      call.state = state;
      if (call === this.current) this.#setCallState(state, text);
      else this.#showOther();
    };
    session.on("progress", ({ originator }) => {
      if (originator === "remote") show("ringing", `Ringing ${call.peer}…`);
    });
    session.on("accepted", () => this.#connected(call));
    session.on("confirmed", () => this.#connected(call));
    session.on("hold", ({ originator }) => {
      if (originator === "local" && call === this.current) {
        $("hold").setAttribute("aria-pressed", "true");
      }
      show("held", `${call.peer}: on hold`);
    });
    session.on("unhold", ({ originator }) => {
      if (originator === "local" && call === this.current) {
        $("hold").setAttribute("aria-pressed", "false");
      }
      if (!session.isOnHold().local && !session.isOnHold().remote) {
        show("active", `In call with ${call.peer}`);
      }
    });
    session.on("muted", () => $("mute").setAttribute("aria-pressed", "true"));
    session.on("unmuted", () => $("mute").setAttribute("aria-pressed", "false"));
    session.on("ended", ({ originator, cause }) => {
      // JsSIP hangs up itself when ICE fails (cause RTP_TIMEOUT); the phone does when ICE
      // never connects: the call was answered, its media could not flow.
      if (cause === JsSIP.C.causes.RTP_TIMEOUT || call.mediaBlocked) {
        this.#showError(MEDIA_BLOCKED);
        this.#drop(call, "Call failed");
        return;
      }
      const who = originator === "remote" ? `${call.peer} hung up` : "Call ended";
      this.#drop(call, who);
    });
    session.on("failed", (failure) => {
      const message = call.state === "incoming" && call !== this.current ? ""
        : callFailure(failure, call.peer);
      if (message) this.#showError(message);
      this.#drop(call, message ? "Call failed" : "Call ended");
    });
    // The other party transfers this call (REFER): call the target, then this call ends.
    session.on("refer", ({ accept }) => this.#transferred(call, accept));
    // An attended transfer names this call in an INVITE with Replaces.
    session.on("replaces", ({ accept }) => accept());
  }

  async #transferred(call, accept) {
    const stream = await this.#openMedia(false);
    if (!stream) return;
    await this.#refreshSettings();
    const target = new Call(null, "");
    target.stream = stream;
    accept((session) => {
      target.session = session;
      target.peer = session.remote_identity.uri.user || session.remote_identity.uri.toString();
      this.#bind(target);
      if (this.current === call) {
        this.current = target;
        this.#setCallState("calling", `Transferred: calling ${target.peer}…`);
      } else {
        this.other = target;
      }
      session.on("peerconnection", ({ peerconnection }) => this.#watchIfCurrent(target,
                                                                              peerconnection));
    }, { mediaStream: stream, pcConfig: { iceServers: this.settings.ice_servers } });
  }

  #connected(call) {
    if (call.established) return;
    if (call === this.current) this.#ringer.stop();
    call.answeredAt = Date.now();
    call.state = "active";
    call.mediaTimer = setTimeout(() => {
      if (!call.iceConnected) this.#giveUpOnMedia(call);
    }, MEDIA_CONNECT_LIMIT_MS);
    if (call === this.current) {
      this.#showCall(call);
    } else {
      this.#showOther();
    }
    if (this.#timers.length === 0) {
      this.#every(TIMER_INTERVAL_MS, () => this.#showTimer());
      this.#every(QUALITY_INTERVAL_MS, () => this.#showQuality());
    }
    this.#publishPresence();
  }

  // A call is over: the other call, if any, becomes the current one.
  #drop(call, text) {
    if (call !== this.current && call !== this.other) return;
    call.stream?.getTracks().forEach((track) => track.stop());
    clearTimeout(call.mediaTimer);
    call.state = "ended";
    if (call === this.other) {
      this.other = null;
      this.#showOther();
      this.#refreshControls();
      return;
    }
    this.current = this.other;
    this.other = null;
    this.#showOther();
    if (this.current) {
      if (this.current.state === "incoming") this.#ringer.start();
      this.#showCall(this.current, text);
      return;
    }
    this.#ringer.stop();
    this.#timers.forEach(clearInterval);
    this.#timers = [];
    this.localStream = null;
    this.peerConnection = null;
    this.remoteStream = null;
    for (const id of ["remote-audio", "remote-video", "local-video"]) $(id).srcObject = null;
    $("videos").hidden = true;
    $("quality").hidden = true;
    $("mute").setAttribute("aria-pressed", "false");
    $("hold").setAttribute("aria-pressed", "false");
    this.#setCallState("idle", text);
    this.#publishPresence();
  }

  // --- media ------------------------------------------------------------------------------------
  async #openMedia(withVideo) {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: withVideo });
    } catch (error) {
      this.#showError(mediaFailure(error));
      return null;
    }
    this.localStream = stream;
    if (withVideo) {
      $("local-video").srcObject = stream;
      $("videos").hidden = false;
    }
    return stream;
  }

  // Whether the call's media ever connects (ICE), whichever call is on screen.
  #watchIce(call, pc) {
    if (call.watchedConnection === pc) return;
    call.watchedConnection = pc;
    call.iceConnected = false;
    pc.addEventListener("iceconnectionstatechange", () => {
      if (call.watchedConnection !== pc) return;
      const state = pc.iceConnectionState;
      if (state === "connected" || state === "completed") call.iceConnected = true;
      else if (state === "failed" && !call.iceConnected) this.#giveUpOnMedia(call);
    });
  }

  #giveUpOnMedia(call) {
    if (call.mediaBlocked || call.state === "ended" || !call.session) return;
    call.mediaBlocked = true;
    this.#showError(MEDIA_BLOCKED);
    call.session.terminate();
  }

  #watchIfCurrent(call, pc) {
    if (call === this.current) this.#watch(pc);
  }

  // Plays the current call's remote media; the tracks it already has and those still to come.
  #watch(pc) {
    if (this.peerConnection === pc) return;
    this.peerConnection = pc;
    const stream = new MediaStream();
    this.remoteStream = stream;
    $("remote-audio").srcObject = stream;
    const add = (track) => {
      if (this.remoteStream !== stream || stream.getTrackById(track.id)) return;
      stream.addTrack(track);
      if (track.kind === "video") {
        // The audio element plays the sound; the video element only shows the picture.
        $("remote-video").muted = true;
        $("remote-video").srcObject = stream;
        $("videos").hidden = false;
      }
    };
    for (const receiver of pc.getReceivers()) {
      if (receiver.track && receiver.track.readyState === "live") add(receiver.track);
    }
    pc.addEventListener("track", ({ track }) => add(track));
  }

  async #refreshSettings() {
    if (!this.settings || !isStale(this.settings)) return;
    try {
      this.settings = await fetchSettings({
        username: $("user").value.trim(), password: $("password").value,
      });
    } catch (error) {
      // Calls on loopback or open networks still work without fresh TURN credentials.
      console.warn(`keeping the old ICE servers: ${error.message}`);
    }
  }

  // --- display ----------------------------------------------------------------------------------
  #showCall(call, text) {
    if (call.session?.connection) this.#watch(call.session.connection);
    const held = call.session?.isOnHold();
    $("hold").setAttribute("aria-pressed", held?.local ? "true" : "false");
    $("mute").setAttribute("aria-pressed", call.session?.isMuted().audio ? "true" : "false");
    if (call.state === "incoming") {
      this.#setCallState("incoming", `Incoming call from ${call.peer}`);
    } else if (held?.local || held?.remote) {
      call.state = "held";
      this.#setCallState("held", `${call.peer}: on hold`);
    } else if (call.established) {
      this.#setCallState("active", text && text.endsWith("hung up")
        ? `${text} · in call with ${call.peer}` : `In call with ${call.peer}`);
    } else {
      this.#setCallState(call.state, text ?? call.peer);
    }
  }

  #showOther() {
    const line = $("second-call");
    const other = this.other;
    line.dataset.state = other ? (other.state === "incoming" ? "waiting" : other.state) : "none";
    line.textContent = !other ? ""
      : other.state === "incoming" ? `Call waiting: ${other.peer}`
        : `${other.peer}: ${other.state === "held" ? "on hold" : other.state}`;
    line.hidden = !other;
    $("waiting-actions").hidden = other?.state !== "incoming";
  }

  async #showQuality() {
    if (!this.peerConnection) return;
    const quality = await audioQuality(this.peerConnection);
    const line = $("quality");
    line.textContent = describeQuality(quality);
    line.dataset.packetsLost = quality.packetsLost;
    line.dataset.packetsReceived = quality.packetsReceived;
    line.dataset.jitterMs = quality.jitterMs ?? "";
    line.dataset.rttMs = quality.rttMs ?? "";
    line.dataset.path = quality.path ?? "";
    line.hidden = false;
  }

  #showTimer() {
    const answeredAt = this.current?.answeredAt;
    if (!answeredAt) return;
    const seconds = Math.floor((Date.now() - answeredAt) / 1000);
    const two = (n) => String(n).padStart(2, "0");
    $("call-timer").textContent = `${two(Math.floor(seconds / 60))}:${two(seconds % 60)}`;
  }

  #every(ms, action) {
    action();
    this.#timers.push(setInterval(action, ms));
  }

  get callState() {
    return $("call-status").dataset.state;
  }

  #setCallState(state, text) {
    const status = $("call-status");
    status.dataset.state = state;
    status.textContent = text;
    if (state === "idle") $("call-timer").textContent = "00:00";
    this.#refreshControls();
  }

  #refreshControls() {
    const state = this.callState;
    for (const [id, enabled] of Object.entries(CONTROLS[state])) $(id).disabled = !enabled;
    const current = this.current;
    const other = this.other;
    const established = current?.established ?? false;
    // A second, consultation call while the first is up and no other call is around.
    if (established && !other) $("call").disabled = false;
    $("swap").disabled = !(established && other?.established);
    $("transfer").disabled = !established;
    $("complete-transfer").disabled = !(established && other?.established);
    $("accept-waiting").disabled = other?.state !== "incoming";
    $("reject-waiting").disabled = other?.state !== "incoming";
    $("call-tools").hidden = !established;
  }

  #setTransfer(state, text) {
    const line = $("transfer-status");
    line.dataset.state = state;
    line.textContent = text;
    line.hidden = false;
  }

  #setRegistration(state, text) {
    const badge = $("registration");
    badge.dataset.state = state;
    badge.textContent = text;
  }

  #showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  #clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }
}

const phone = new Phone();
// For the browser console and the tests: the live call's media objects.
window.ws2sipPhone = phone;
phone.load();
