// The gateway's settings for this page: WebSocket URL, SIP domain and ICE servers. TURN
// credentials (time-limited) come only for a signed-in user: the gateway challenges with HTTP
// digest on the SIP realm, answered here with JsSIP's own digest code and the SIP password.
import DigestAuthentication from "jssip/lib/DigestAuthentication.js";

const SETTINGS_PATH = "/config.json";

async function getSettings(headers = {}) {
  const response = await fetch(SETTINGS_PATH, { cache: "no-store", headers });
  const body = await response.text();
  return { response, body };
}

// credentials: { username, password } to get TURN credentials; without, the public settings.
export async function fetchSettings(credentials) {
  let { response, body } = await getSettings();
  if (!response.ok) {
    throw new Error(`the gateway refused ${SETTINGS_PATH}: ${response.status} ${body.trim()}`);
  }
  let settings = JSON.parse(body);
  if (credentials?.username && credentials.password && settings.turn_challenge) {
    const digest = new DigestAuthentication(credentials);
    if (digest.authenticate({ method: "GET", ruri: SETTINGS_PATH }, settings.turn_challenge)) {
      ({ response, body } = await getSettings({ Authorization: digest.toString() }));
      // Refused (a wrong password): sign-in goes on without TURN, and REGISTER says why.
      if (response.ok) settings = JSON.parse(body);
    }
  }
  // TURN credentials expire: remember when, so a call never starts with stale ones.
  const ttlMs = (settings.turn_ttl ?? Infinity) * 1000;
  settings.refreshAfter = Date.now() + ttlMs / 2;
  return settings;
}

export function isStale(settings) {
  return Date.now() >= settings.refreshAfter;
}
