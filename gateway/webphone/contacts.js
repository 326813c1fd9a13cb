// Contacts with busy lamps, presence and the voicemail indicator: what the page learns from
// SUBSCRIBE/NOTIFY. Each contact is watched twice: its calls (Event: dialog, RFC 4235, which
// the gateway answers for its own users and a PBX for its extensions) and its presence
// (Event: presence, relayed to the contact's own web phone, which answers with PIDF).

export const CONTACTS_KEY = "ws2sip.contacts";
export const VOICEMAIL_KEY = "ws2sip.voicemail";
const MAX_CONTACTS = 12;
const SUBSCRIPTION_EXPIRES = 600;
const DIALOG_INFO = "application/dialog-info+xml";
const PIDF = "application/pidf+xml";
export const MESSAGE_SUMMARY = "application/simple-message-summary";

// "bob, 201 carol" → ["bob", "201", "carol"]: names or numbers, each once.
export function parseContacts(text) {
  const names = (text ?? "").split(/[\s,;]+/).map((name) => name.trim()).filter(Boolean);
  return [...new Set(names)].slice(0, MAX_CONTACTS);
}

// RFC 3842 body: "Messages-Waiting: yes" and "Voice-Message: 2/8 (0/0)".
export function parseMessageSummary(body) {
  const waiting = /^Messages-Waiting:\s*yes/im.test(body ?? "");
  const voice = /^Voice-Message:\s*(\d+)\/(\d+)/im.exec(body ?? "");
  return {
    waiting,
    newMessages: voice ? Number(voice[1]) : (waiting ? 1 : 0),
    oldMessages: voice ? Number(voice[2]) : 0,
  };
}

// The lamp for a dialog-info document: busy when a call is up, ringing when one is being set
// up, idle when none.
export function dialogState(xml) {
  const doc = new DOMParser().parseFromString(xml, "application/xml");
  const states = [...doc.getElementsByTagNameNS("*", "state")]
    .filter((node) => node.parentNode?.localName === "dialog")
    .map((node) => node.textContent.trim());
  if (states.includes("confirmed")) return "busy";
  if (states.some((state) => ["trying", "proceeding", "early"].includes(state))) return "ringing";
  return "idle";
}

// PIDF (RFC 3863) basic status: true (open), false (closed), null (no tuple).
export function presenceOpen(xml) {
  const doc = new DOMParser().parseFromString(xml, "application/xml");
  const basic = [...doc.getElementsByTagNameNS("*", "basic")].map((n) => n.textContent.trim());
  if (basic.includes("open")) return true;
  return basic.length ? false : null;
}

export function pidf(entity, open, note) {
  const escape = (text) => text.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);
  return '<?xml version="1.0" encoding="UTF-8"?>\n'
    + `<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="${escape(entity)}">\n`
    + `  <tuple id="ws2sip"><status><basic>${open ? "open" : "closed"}</basic></status>`
    + `<note>${escape(note)}</note></tuple>\n</presence>\n`;
}

// What one lamp shows: a call beats presence; an unreachable contact is offline.
export function lampState({ dialog, presence }) {
  if (dialog === "busy" || dialog === "ringing") return dialog;
  if (presence === "offline") return "offline";
  if (dialog === "idle" || presence === "online") return "idle";
  return "unknown";
}

const LAMP_TEXT = {
  busy: "on a call", ringing: "ringing", idle: "available", offline: "offline", unknown: "…",
};

// The contacts list: one row per contact, its lamp fed by two subscriptions.
export class ContactList {
  #ua = null;
  #domain = "";
  #list;
  #subscribers = [];
  #states = new Map();
  onPick = () => {};

  constructor(list) {
    this.#list = list;
  }

  watch(ua, domain, names) {
    this.stop();
    this.#ua = ua;
    this.#domain = domain;
    this.#list.replaceChildren();
    for (const name of names) {
      this.#states.set(name, { dialog: null, presence: null });
      const row = document.createElement("li");
      row.dataset.contact = name;
      const lamp = document.createElement("span");
      lamp.className = "lamp";
      const label = document.createElement("button");
      label.type = "button";
      label.className = "contact-name";
      label.textContent = name;
      label.title = `Call ${name}`;
      label.addEventListener("click", () => this.onPick(name));
      const state = document.createElement("span");
      state.className = "contact-state";
      row.append(lamp, label, state);
      this.#list.append(row);
      this.#show(name);
      this.#subscribe(name, "dialog", DIALOG_INFO, (body) => ({ dialog: dialogState(body) }));
      this.#subscribe(name, "presence", PIDF, (body) => {
        const open = presenceOpen(body);
        return { presence: open === null ? null : (open ? "online" : "offline") };
      });
    }
    this.#list.closest("section").hidden = names.length === 0;
  }

  stop() {
    for (const subscriber of this.#subscribers) {
      try {
        subscriber.terminate();
      } catch {
        // Already ended (refused or timed out): nothing to take back.
      }
    }
    this.#subscribers = [];
    this.#states.clear();
  }

  #subscribe(name, event, accept, read) {
    const target = name.includes("@") ? `sip:${name.replace(/^sips?:/, "")}`
      : `sip:${name}@${this.#domain}`;
    const subscriber = this.#ua.subscribe(target, event, accept, {
      expires: SUBSCRIPTION_EXPIRES, contentType: accept,
    });
    subscriber.on("notify", (isFinal, request, body) => {
      if (body) this.#update(name, read(body));
    });
    subscriber.on("terminated", (code) => {
      // Refused (404 no such user, 480 not signed in) or ended: that side knows nothing.
      if (event === "presence") this.#update(name, { presence: "offline" });
      else if (code !== subscriber.C.FINAL_NOTIFY_RECEIVED) this.#update(name, { dialog: null });
    });
    this.#subscribers.push(subscriber);
    subscriber.subscribe();
  }

  #update(name, change) {
    const state = this.#states.get(name);
    if (!state) return;
    Object.assign(state, change);
    this.#show(name);
  }

  #show(name) {
    const row = this.#list.querySelector(`li[data-contact="${CSS.escape(name)}"]`);
    const state = this.#states.get(name);
    if (!row || !state) return;
    const lamp = lampState(state);
    row.dataset.state = lamp;
    row.querySelector(".contact-state").textContent = LAMP_TEXT[lamp];
  }
}
