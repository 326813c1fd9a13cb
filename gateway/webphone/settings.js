// The gateway's settings for this page: WebSocket URL, SIP domain and ICE servers (with
// time-limited TURN credentials for the signed-in user when a TURN server is configured).

export async function fetchSettings(user) {
  const query = user ? `?user=${encodeURIComponent(user)}` : "";
  const response = await fetch(`/config.json${query}`, { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`the gateway refused /config.json: ${response.status} ` +
      `${(await response.text()).trim()}`);
  }
  const settings = await response.json();
  // TURN credentials expire: remember when, so a call never starts with stale ones.
  const ttlMs = (settings.turn_ttl ?? Infinity) * 1000;
  settings.refreshAfter = Date.now() + ttlMs / 2;
  return settings;
}

export function isStale(settings) {
  return Date.now() >= settings.refreshAfter;
}
