// JsSIP user agent in node, driven by JSON lines on stdin; replies and events on stdout.
// Signalling only (REGISTER, MESSAGE): calls need RTCPeerConnection and happen in Chromium.
//
// Commands: {"id", "cmd": "register", ws_url, uri, password, authorization_user?, display_name?,
//            register_expires?, instance_id?, contact_uri?, extra_headers?}
//           {"id", "cmd": "unregister", all?}
//           {"id", "cmd": "message", target, body, content_type?}
//           {"id", "cmd": "stop"}
// Events:   ready, connected, disconnected, registered, unregistered, registrationFailed,
//           newMessage
import readline from "node:readline";
import { format } from "node:util";
import WebSocket from "ws";

// JsSIP's WebSocketInterface constructs the global WebSocket, which node 20 does not have.
globalThis.WebSocket = WebSocket;
// stdout carries only JSON lines; JsSIP's loggers bind console methods when its modules load, so
// console is pointed at stderr (the agent's log file) before JsSIP is imported.
for (const level of ["log", "info", "debug", "warn", "error"]) {
  console[level] = (...args) => process.stderr.write(`${format(...args)}\n`);
}
const { default: JsSIP } = await import("jssip");
JsSIP.debug.enable("JsSIP:*");

let ua = null;

function emit(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function statusOf(response) {
  return response ? { status: response.status_code, reason: response.reason_phrase } : {};
}

// Resolves with the first of the named UA events, as [name, data].
function firstOf(names) {
  return new Promise((resolve) => {
    const listeners = names.map((name) => {
      const listener = (data) => {
        names.forEach((other, index) => ua.removeListener(other, listeners[index]));
        resolve([name, data]);
      };
      ua.on(name, listener);
      return listener;
    });
  });
}

function createUserAgent(params) {
  const config = {
    sockets: [new JsSIP.WebSocketInterface(params.ws_url)],
    uri: params.uri,
    password: params.password,
    register: true,
    // The tests expect a prompt, single answer when the gateway is down, not endless retries.
    connection_recovery_min_interval: 2,
    connection_recovery_max_interval: 30,
  };
  for (const key of ["authorization_user", "display_name", "register_expires", "instance_id",
    "contact_uri"]) {
    if (params[key] !== undefined && params[key] !== null) config[key] = params[key];
  }
  const agent = new JsSIP.UA(config);
  if (params.extra_headers) agent.registrator().setExtraHeaders(params.extra_headers);
  agent.on("connected", () => emit({ event: "connected" }));
  agent.on("disconnected", (data) => emit({
    event: "disconnected", code: data.code ?? null, reason: data.reason ?? null,
    error: Boolean(data.error),
  }));
  agent.on("registered", (data) => emit({
    event: "registered", ...statusOf(data.response),
    contact: data.response?.getHeader("Contact") ?? null,
    expires: data.response?.getHeader("Expires") ?? null,
  }));
  agent.on("unregistered", (data) => emit({ event: "unregistered", ...statusOf(data.response) }));
  agent.on("registrationFailed", (data) => emit({
    event: "registrationFailed", ...statusOf(data.response), cause: data.cause,
  }));
  agent.on("newMessage", (data) => {
    if (data.originator !== "remote") return;
    emit({
      event: "newMessage", from: data.request.from.uri.toString(), body: data.request.body,
      content_type: data.request.getHeader("Content-Type"),
    });
  });
  return agent;
}

const commands = {
  async register(params) {
    if (ua) throw new Error("already started; one user agent per agent process");
    ua = createUserAgent(params);
    const outcome = firstOf(["registered", "registrationFailed", "disconnected"]);
    ua.start();
    const [name, data] = await outcome;
    if (name === "registered") return { outcome: name, ...statusOf(data.response) };
    if (name === "registrationFailed") {
      return { outcome: name, ...statusOf(data.response), cause: data.cause };
    }
    return { outcome: "transportError", code: data.code ?? null, reason: data.reason ?? null };
  },

  async unregister(params) {
    if (!ua) throw new Error("not registered");
    const outcome = firstOf(["unregistered", "registrationFailed"]);
    ua.unregister({ all: Boolean(params.all) });
    const [name, data] = await outcome;
    return { outcome: name, ...statusOf(data.response), cause: data.cause ?? null };
  },

  message(params) {
    if (!ua) throw new Error("not started");
    return new Promise((resolve) => {
      ua.sendMessage(params.target, params.body, {
        contentType: params.content_type ?? "text/plain",
        eventHandlers: {
          succeeded: (data) => resolve({ outcome: "succeeded", ...statusOf(data.response) }),
          failed: (data) => resolve({
            outcome: "failed", ...statusOf(data.response), cause: data.cause,
          }),
        },
      });
    });
  },

  async stop() {
    if (ua) {
      const stopped = firstOf(["disconnected"]);
      ua.stop();
      // A UA that never connected emits nothing more on stop.
      await Promise.race([stopped, new Promise((resolve) => setTimeout(resolve, 2000))]);
    }
    setImmediate(() => process.exit(0));
    return {};
  },
};

const input = readline.createInterface({ input: process.stdin });
input.on("line", async (line) => {
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    emit({ event: "protocolError", error: `not JSON: ${line}` });
    return;
  }
  const handler = commands[request.cmd];
  if (!handler) {
    emit({ id: request.id, ok: false, error: `unknown command ${request.cmd}` });
    return;
  }
  try {
    emit({ id: request.id, ok: true, ...(await handler(request)) });
  } catch (error) {
    emit({ id: request.id, ok: false, error: String(error?.stack ?? error) });
  }
});
input.on("close", () => {
  if (ua) ua.stop();
  setTimeout(() => process.exit(0), 500);
});

emit({ event: "ready", jssip_version: JsSIP.version });
