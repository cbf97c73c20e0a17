// The login session of this tab, and how tabs share it.
//
// Choice (documented here because it is a trade-off):
// - The bearer token lives in sessionStorage only: it survives a reload of the tab but
//   not the browser, and it is never sent automatically (no cookie, so no CSRF) nor
//   left on disk for other sessions (no localStorage).
// - sessionStorage is per tab, so a tab opened later (a new tab on the same origin) would
//   start logged out. On start-up a tab without a session asks the other open tabs of the
//   same origin over a BroadcastChannel ("messenger:auth") and adopts the first answer
//   (token, user and session key). BroadcastChannel never leaves the origin, and any
//   script able to listen on it could already read this tab's sessionStorage, so this
//   widens nothing. If several accounts are logged in in different tabs, the new tab gets
//   whichever answers first; "Switch account" forgets the session in one tab only, and
//   opening the page with "?fresh" skips the question (a clean login form).
// - The session key is a random id made at login and shared with the token. It names
//   the tab group that shares one long poll (see tabs.js) and scopes "logout" broadcasts:
//   logging out revokes the token on the server, so every tab holding it logs out too.

const STORAGE_KEY = "messenger.session";
const AUTH_CHANNEL = "messenger:auth";
const ASK_TIMEOUT_MS = 300;

export function randomId(bytes = 12) {
  const buf = new Uint8Array(bytes);
  crypto.getRandomValues(buf); // available in insecure contexts, unlike randomUUID
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

function storage() {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled: the session lasts as long as the page
  }
}

/** @returns {{token: string, user: object, key: string} | null} */
export function loadSession() {
  const store = storage();
  if (!store) return null;
  try {
    const raw = JSON.parse(store.getItem(STORAGE_KEY) || "null");
    if (raw && typeof raw.token === "string" && raw.user && typeof raw.key === "string") {
      return raw;
    }
  } catch {
    /* corrupt entry: treat as logged out */
  }
  return null;
}

export function saveSession(session) {
  const store = storage();
  if (store) store.setItem(STORAGE_KEY, JSON.stringify(session));
}

export function clearSession() {
  const store = storage();
  if (store) store.removeItem(STORAGE_KEY);
}

/** Per-tab JSON storage for other small state (the outbox of unsent messages). */
export function loadJson(key, fallback) {
  const store = storage();
  if (!store) return fallback;
  try {
    const value = JSON.parse(store.getItem(key) || "null");
    return value === null ? fallback : value;
  } catch {
    return fallback;
  }
}

export function saveJson(key, value) {
  const store = storage();
  if (!store) return;
  try {
    store.setItem(key, JSON.stringify(value));
  } catch {
    /* quota exceeded: keep going with the in-memory copy */
  }
}

/**
 * The auth channel: answers other tabs asking for a session, asks for one, and
 * announces logouts.
 */
export class SessionSharing {
  constructor({ getSession, onRemoteLogout }) {
    this.getSession = getSession;
    this.onRemoteLogout = onRemoteLogout;
    this.pending = new Map(); // request id -> resolve
    this.channel = "BroadcastChannel" in window ? new BroadcastChannel(AUTH_CHANNEL) : null;
    if (this.channel) this.channel.onmessage = (ev) => this.handle(ev.data || {});
  }

  handle(msg) {
    if (msg.kind === "session?") {
      const session = this.getSession();
      if (session) this.channel.postMessage({ kind: "session!", reqId: msg.reqId, session });
    } else if (msg.kind === "session!") {
      const resolve = this.pending.get(msg.reqId);
      if (resolve) resolve(msg.session);
    } else if (msg.kind === "logout") {
      const session = this.getSession();
      if (session && session.key === msg.key) this.onRemoteLogout();
    }
  }

  /** Ask the other tabs for their session; null when none answers in time. */
  ask(timeoutMs = ASK_TIMEOUT_MS) {
    if (!this.channel) return Promise.resolve(null);
    const reqId = randomId(8);
    return new Promise((resolve) => {
      const done = (session) => {
        this.pending.delete(reqId);
        clearTimeout(timer);
        const ok = session && typeof session.token === "string" && typeof session.key === "string";
        resolve(ok ? session : null);
      };
      const timer = setTimeout(() => done(null), timeoutMs);
      this.pending.set(reqId, done);
      this.channel.postMessage({ kind: "session?", reqId });
    });
  }

  announceLogout(key) {
    if (this.channel) this.channel.postMessage({ kind: "logout", key });
  }
}
