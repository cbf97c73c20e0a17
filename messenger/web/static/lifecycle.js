// Session life cycle in this tab: start, end (logout, switch account, expiry), and
// finding the session at start-up.

import * as api from "./api.js";
import { SessionSharing, clearSession, loadSession, saveJson, saveSession } from "./session.js";
import { loadConversations } from "./conversations.js";
import { $, clearError } from "./dom.js";
import { showAuth } from "./login.js";
import { outboxKey, restoreOutbox } from "./outbox.js";
import { loadPresence, PRESENCE_REFRESH_MS } from "./presence.js";
import { loadBlocks } from "./safety.js";
import { route } from "./router.js";
import { state } from "./state.js";
import { joinTabGroup, renderConnection, stopSync } from "./sync.js";
import { cacheUser } from "./users.js";

let sharing = null;

function renderMe() {
  const me = state.me;
  $("me-name").textContent = me ? `${me.display_name || me.handle} (@${me.handle})` : "";
}

export function startSession(session) {
  state.session = session;
  saveSession(session);
  api.setToken(session.token);
  state.me = session.user;
  cacheUser(session.user);
  state.connection = "connecting";
  $("boot").hidden = true;
  $("auth-view").hidden = true;
  $("app-view").hidden = false;
  renderMe();
  renderConnection();
  restoreOutbox();

  joinTabGroup(session);

  loadConversations({ reset: true });
  loadBlocks();
  state.presenceTimer = setInterval(loadPresence, PRESENCE_REFRESH_MS);
  route();
  if (!state.chat) $("new-direct-handle").focus();

  api
    .getMe()
    .then((res) => {
      if (state.session !== session) return;
      state.me = res.user;
      cacheUser(res.user);
      session.user = res.user;
      saveSession(session);
      renderMe();
    })
    .catch(() => {}); // a 401 ends the session through api.onUnauthorized
}

/** Leave the session in this tab: the token is forgotten, the UI reset. */
function endSession(notice, { announceToTabs, dropOutbox = false }) {
  const session = state.session;
  if (!session) return;
  // Unsent messages survive an expired session or an account switch (they are sent when
  // the same user logs in again in this tab), not an explicit logout.
  if (dropOutbox) saveJson(outboxKey(), []);
  state.session = null;
  if (announceToTabs) sharing.announceLogout(session.key);
  clearSession();
  api.setToken(null);
  stopSync();
  clearInterval(state.presenceTimer);
  for (const queue of state.sendQueues.values()) clearTimeout(queue.timer);
  for (const typers of state.typing.values()) for (const t of typers.values()) clearTimeout(t);
  Object.assign(state, {
    me: null,
    conversations: new Map(),
    listNext: null,
    users: new Map(),
    userFailedAt: new Map(),
    presence: new Map(),
    chat: null,
    typing: new Map(),
    outbox: new Map(),
    sendQueues: new Map(),
    cursor: null,
    lastEventId: 0,
    connection: "connecting",
    deliveredPosted: new Map(),
    readPosted: new Map(),
    blocked: new Set(),
    archivedView: false,
  });
  state.listGeneration += 1;
  state.chatGeneration += 1;
  $("conversation-list").replaceChildren();
  $("request-list").replaceChildren();
  $("settings-view").hidden = true;
  $("message-list").replaceChildren();
  $("chat").hidden = true;
  $("chat-placeholder").hidden = false;
  $("live-region").replaceChildren();
  for (const id of [
    "list-error",
    "chat-error",
    "new-direct-error",
    "group-error",
    "members-error",
    "profile-message",
    "password-message",
    "sessions-error",
  ]) {
    clearError($(id));
  }
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  showAuth(notice);
}

async function logoutClicked() {
  const button = $("logout-button");
  button.disabled = true;
  let notice = "You are logged out.";
  try {
    await api.logout();
  } catch (err) {
    if (!(err instanceof api.ApiError && err.status === 401)) {
      notice =
        "Logged out in this browser, but the server could not be told: " + api.describeError(err);
    }
  } finally {
    button.disabled = false;
  }
  endSession(notice, { announceToTabs: true, dropOutbox: true });
}

export function bindLifecycle() {
  $("logout-button").addEventListener("click", logoutClicked);
  $("switch-account-button").addEventListener("click", () =>
    endSession("Log in with another account. Other tabs keep their session.", {
      announceToTabs: false,
    }),
  );
}

/** Start-up: this tab's session, else one another open tab shares, else the login form. */
export async function resumeSession() {
  sharing = new SessionSharing({
    getSession: () => state.session,
    onRemoteLogout: () =>
      endSession("You logged out in another tab.", { announceToTabs: false, dropOutbox: true }),
  });
  api.onUnauthorized(() =>
    endSession("Your session has ended. Please log in again.", { announceToTabs: true }),
  );
  let session = loadSession();
  if (!session && !new URLSearchParams(location.search).has("fresh")) {
    session = await sharing.ask();
  }
  if (session) startSession(session);
  else showAuth();
}
