// The web phone: sign in, call, answer, hang up, keypad (DTMF), mute, hold, video, call timer
// and a live quality line, on top of JsSIP talking SIP over the gateway's WebSocket.
import JsSIP from "jssip";

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

const $ = (id) => document.getElementById(id);

// Which controls a call state enables.
const CONTROLS = {
  idle: { call: true, answer: false, hangup: false, mute: false, hold: false },
  calling: { call: false, answer: false, hangup: true, mute: false, hold: false },
  ringing: { call: false, answer: false, hangup: true, mute: false, hold: false },
  incoming: { call: false, answer: true, hangup: true, mute: false, hold: false },
  active: { call: false, answer: false, hangup: true, mute: true, hold: true },
  held: { call: false, answer: false, hangup: true, mute: true, hold: true },
};

class Phone {
  settings = null;
  ua = null;
  registered = false;
  session = null;
  peer = "";
  offer = "";
  localStream = null;
  remoteStream = null;
  peerConnection = null;
  #ringer = new Ringer();
  #timers = [];
  #answeredAt = 0;
  #iceConnected = false;
  #mediaBlocked = false;

  async load() {
    $("user").value = localStorage.getItem(REMEMBERED_USER) ?? "";
    $("sign-in-form").addEventListener("submit", (event) => this.signIn(event));
    $("sign-out").addEventListener("click", () => this.signOut());
    $("dial-form").addEventListener("submit", (event) => this.call(event));
    $("answer").addEventListener("click", () => this.answer());
    $("hangup").addEventListener("click", () => this.hangUp());
    $("mute").addEventListener("click", () => this.toggleMute());
    $("hold").addEventListener("click", () => this.toggleHold());
    $("keypad").addEventListener("click", (event) => {
      const digit = event.target.dataset?.digit;
      if (digit) this.pressKey(digit);
    });
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
      this.registered = true;
      this.#setRegistration("registered", `Registered as ${user}@${domain}`);
      $("sign-in-form").hidden = true;
      $("dialer").hidden = false;
      $("sign-in").disabled = false;
    });
    ua.on("registrationFailed", (failure) => {
      if (this.ua === ua) this.#failSignIn(registrationFailure(failure, server));
    });
    ua.on("newRTCSession", ({ originator, session, request }) => {
      if (originator === "remote") this.#incoming(session, request.body ?? "");
    });
    ua.start();
  }

  signOut() {
    this.session?.terminate();
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

  // --- calls ------------------------------------------------------------------------------------
  async call(event) {
    event.preventDefault();
    if (this.session || !this.ua) return;
    this.#clearError();
    const target = $("target").value.trim();
    if (!target) {
      this.#showError("Type who to call: a user name, a number or sip:user@domain.");
      return;
    }
    this.peer = target;
    this.#setCallState("calling", `Calling ${target}…`);
    const stream = await this.#openMedia($("with-video").checked);
    if (!stream) {
      this.#setCallState("idle", "Ready");
      return;
    }
    await this.#refreshSettings();
    if (this.callState !== "calling") {
      // Hung up while the browser was still asking for the microphone.
      stream.getTracks().forEach((track) => track.stop());
      return;
    }
    const session = this.ua.call(target, {
      mediaStream: stream,
      pcConfig: { iceServers: this.settings.ice_servers },
    });
    this.#bind(session);
    if (session.connection) this.#watch(session.connection);
  }

  #incoming(session, offer) {
    if (this.session) {
      session.terminate({ status_code: 486, reason_phrase: "Busy Here" });
      return;
    }
    this.#clearError();
    const caller = session.remote_identity;
    this.peer = caller.display_name || caller.uri.user || caller.uri.toString();
    this.offer = offer;
    this.#bind(session);
    session.on("peerconnection", ({ peerconnection }) => this.#watch(peerconnection));
    this.#setCallState("incoming", `Incoming call from ${this.peer}`);
    this.#ringer.start();
  }

  async answer() {
    const session = this.session;
    if (!session || this.callState !== "incoming") return;
    this.#ringer.stop();
    const withVideo = $("with-video").checked && /^m=video [1-9]/m.test(this.offer);
    const stream = await this.#openMedia(withVideo);
    if (!stream) {
      session.terminate({ status_code: 488, reason_phrase: "No Media Access" });
      return;
    }
    if (this.session !== session) {
      stream.getTracks().forEach((track) => track.stop());
      return;
    }
    await this.#refreshSettings();
    session.answer({
      mediaStream: stream,
      pcConfig: { iceServers: this.settings.ice_servers },
    });
  }

  hangUp() {
    const session = this.session;
    if (!session) {
      if (this.callState === "calling") this.#setCallState("idle", "Call ended");
      return;
    }
    if (this.callState === "incoming") {
      session.terminate({ status_code: 603, reason_phrase: "Decline" });
    } else {
      session.terminate();
    }
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
    if (this.session && (this.callState === "active" || this.callState === "held")) {
      this.session.sendDTMF(digit, DTMF_OPTIONS);
      $("call-status").textContent = `In call with ${this.peer} · sent ${digit}`;
    } else {
      $("target").value += digit;
    }
  }

  #bind(session) {
    this.session = session;
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
    session.on("progress", ({ originator }) => {
      if (originator === "remote") this.#setCallState("ringing", `Ringing ${this.peer}…`);
    });
    session.on("accepted", () => this.#connected());
    session.on("confirmed", () => this.#connected());
    session.on("hold", ({ originator }) => {
      if (originator === "local") $("hold").setAttribute("aria-pressed", "true");
      this.#setCallState("held", `${this.peer}: on hold`);
    });
    session.on("unhold", ({ originator }) => {
      if (originator === "local") $("hold").setAttribute("aria-pressed", "false");
      if (!session.isOnHold().local && !session.isOnHold().remote) {
        this.#setCallState("active", `In call with ${this.peer}`);
      }
    });
    session.on("muted", () => $("mute").setAttribute("aria-pressed", "true"));
    session.on("unmuted", () => $("mute").setAttribute("aria-pressed", "false"));
    session.on("ended", ({ originator, cause }) => {
      // JsSIP hangs up itself when ICE fails (cause RTP_TIMEOUT); the phone does when ICE
      // never connects: the call was answered, its media could not flow.
      if (cause === JsSIP.C.causes.RTP_TIMEOUT || this.#mediaBlocked) {
        this.#showError(MEDIA_BLOCKED);
        this.#finish(session, "Call failed");
        return;
      }
      const who = originator === "remote" ? `${this.peer} hung up` : "Call ended";
      this.#finish(session, who);
    });
    session.on("failed", (failure) => {
      const message = callFailure(failure, this.peer);
      if (message) this.#showError(message);
      this.#finish(session, message ? "Call failed" : "Call ended");
    });
  }

  #connected() {
    if (this.callState === "active" || this.callState === "held") return;
    this.#ringer.stop();
    this.#answeredAt = Date.now();
    this.#setCallState("active", `In call with ${this.peer}`);
    const session = this.session;
    this.#timers.push(setTimeout(() => {
      if (!this.#iceConnected && this.session === session) this.#giveUpOnMedia(session);
    }, MEDIA_CONNECT_LIMIT_MS));
    this.#every(TIMER_INTERVAL_MS, () => this.#showTimer());
    this.#every(QUALITY_INTERVAL_MS, () => this.#showQuality());
  }

  #finish(session, text) {
    if (this.session !== session) return;
    this.#ringer.stop();
    this.#timers.forEach(clearInterval);  // clears the setTimeout ids too (one id pool)
    this.#timers = [];
    this.localStream?.getTracks().forEach((track) => track.stop());
    this.session = null;
    this.#mediaBlocked = false;
    this.localStream = null;
    this.peerConnection = null;
    for (const id of ["remote-audio", "remote-video", "local-video"]) $(id).srcObject = null;
    $("videos").hidden = true;
    $("quality").hidden = true;
    $("mute").setAttribute("aria-pressed", "false");
    $("hold").setAttribute("aria-pressed", "false");
    this.#setCallState("idle", text);
  }

  // --- media ------------------------------------------------------------------------------------
  async #openMedia(withVideo) {
    try {
      this.localStream = await navigator.mediaDevices.getUserMedia({
        audio: true, video: withVideo,
      });
    } catch (error) {
      this.#showError(mediaFailure(error));
      return null;
    }
    if (withVideo) {
      $("local-video").srcObject = this.localStream;
      $("videos").hidden = false;
    }
    return this.localStream;
  }

  #watch(pc) {
    if (this.peerConnection === pc) return;
    this.peerConnection = pc;
    this.remoteStream = new MediaStream();
    $("remote-audio").srcObject = this.remoteStream;
    this.#iceConnected = false;
    pc.addEventListener("iceconnectionstatechange", () => {
      if (this.peerConnection !== pc) return;
      const state = pc.iceConnectionState;
      if (state === "connected" || state === "completed") this.#iceConnected = true;
      else if (state === "failed" && !this.#iceConnected) this.#giveUpOnMedia(this.session);
    });
    pc.addEventListener("track", ({ track }) => {
      this.remoteStream.addTrack(track);
      if (track.kind === "video") {
        // The audio element plays the sound; the video element only shows the picture.
        $("remote-video").muted = true;
        $("remote-video").srcObject = this.remoteStream;
        $("videos").hidden = false;
      }
    });
  }

  #giveUpOnMedia(session) {
    if (!session || this.#mediaBlocked) return;
    this.#mediaBlocked = true;
    this.#showError(MEDIA_BLOCKED);
    session.terminate();
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
    const seconds = Math.floor((Date.now() - this.#answeredAt) / 1000);
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
    for (const [id, enabled] of Object.entries(CONTROLS[state])) $(id).disabled = !enabled;
    if (state === "idle") $("call-timer").textContent = "00:00";
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
