/*
 * Messenger browser client, written against shared/API.md only.
 * Plain ES modules, no build step, no inline script or style (CSP default-src 'self').
 *
 * Modules: api.js (HTTP calls, error shape), session.js (token in sessionStorage, sharing
 * it with new tabs), tabs.js (leader election: one long poll per session for all tabs),
 * poller.js (the /v1/events loop with backoff and resync), app.js (state and UI).
 *
 * Stable data-testid attributes, for end-to-end tests:
 *   boot                      "Loading…" shown until the session is known
 *   auth-view                 the login/register screen
 *   login-handle, login-password, register-display-name   its inputs
 *   login-button, register-button                         its buttons (register = POST
 *                             /v1/users then POST /v1/sessions)
 *   auth-error, auth-notice   error / notice ("you were logged out") on that screen
 *   app-view                  the messenger (attribute data-view="list"|"chat": which pane
 *                             is shown on narrow screens)
 *   me-name                   the logged-in user's name
 *   connection-status         data-state="connecting"|"live"|"reconnecting"|"offline",
 *                             data-role="leader"|"follower" (does this tab hold the poll)
 *   logout-button             revokes the token (all tabs sharing it log out)
 *   switch-account-button     forgets the session in this tab only (no revocation)
 *   new-direct-handle, new-direct-button, new-direct-error
 *   new-group-toggle, group-title, group-members, create-group-button, group-error
 *   list-error                errors and notices of the list pane (e.g. "X was deleted")
 *   conversation-list, conversation-empty, load-more-conversations
 *   conversation-item         a button; data-conversation-id, data-kind, data-unread,
 *                             aria-current="page" when open
 *     conversation-title, conversation-preview, unread-badge (only when unread > 0),
 *     presence-dot            data-status="online"|"offline", data-user-id (direct chats)
 *   chat-placeholder          shown when no chat is open
 *   chat                      the open chat; data-conversation-id
 *   back-button, chat-title, chat-presence (a presence-dot of the peer)
 *   members-button, members-panel, members-list, member (data-user-id), member-presence,
 *   remove-member-button, rename-title, rename-button, add-member-handle,
 *   add-member-button, members-error, leave-button,
 *   delete-conversation-button (click twice: the first click asks to confirm)
 *   message-scroller, message-list, load-older-button, history-start
 *   message                   data-seq (absent while unsent), data-client-msg-id,
 *                             data-sender-id, data-own="true"|"false", data-status =
 *                             own: "pending"|"failed"|"sent"|"delivered"|"read";
 *                             others': "received"
 *     message-sender, message-body, message-time, message-status (✓ / ✓✓),
 *     message-error, retry-button, discard-button   (the last three on unsent messages)
 *   typing-indicator          "Bob is typing…" (empty when nobody types)
 *   chat-error
 *   message-input, send-button   Enter sends, Shift+Enter inserts a newline
 *   live-region               aria-live announcements (new messages)
 */

import * as api from "./api.js";
import { TabGroup } from "./tabs.js";
import { Poller, backoffDelayMs } from "./poller.js";
import {
  SessionSharing,
  clearSession,
  loadJson,
  loadSession,
  randomId,
  saveJson,
  saveSession,
} from "./session.js";

// API.md: POST .../typing "at most every ~3 s"; show an indicator for ~5 s.
const TYPING_SEND_INTERVAL_MS = 3000;
const TYPING_SHOW_MS = 5000;
const HISTORY_PAGE_SIZE = 50;
const LIST_PAGE_SIZE = 50;
const MAX_BODY_CHARS = 4000; // API.md limit, counted in code points
const PRESENCE_REFRESH_MS = 60_000;
const PRESENCE_BATCH = 100;
// Scrolling within this many pixels of the top loads the previous page of history.
const LOAD_OLDER_THRESHOLD_PX = 120;
// A chat scrolled within this many pixels of the bottom follows new messages.
const STICK_TO_BOTTOM_PX = 80;

const $ = (id) => document.getElementById(id);
const wideQuery = window.matchMedia("(min-width: 720px)");

const state = {
  session: null, // {token, user, key}
  me: null, // User
  conversations: new Map(), // conversation_id -> Conversation (+ members when known)
  listNext: null, // cursor for the next page of conversations
  listGeneration: 0,
  users: new Map(), // user_id -> User
  userRequests: new Map(), // user_id -> Promise
  userFailedAt: new Map(), // user_id -> time of the last failed lookup
  conversationRequests: new Map(), // conversation_id -> Promise
  presence: new Map(), // user_id -> {status, last_seen}
  chat: null, // the open chat, see openChat()
  chatGeneration: 0,
  chatPushed: false, // the chat's history entry was pushed by us (back = history.back)
  typing: new Map(), // conversation_id -> Map(user_id -> timeout id)
  outbox: new Map(), // client_msg_id -> unsent message, see sendComposer()
  sendQueues: new Map(), // conversation_id -> {busy, failures, timer, retryAt}
  cursor: null, // last events cursor seen by this tab (its own poll or the leader's)
  lastEventId: 0, // stored events are applied once, whoever forwards them
  connection: "connecting",
  deliveredPosted: new Map(), // conversation_id -> seq
  readPosted: new Map(), // conversation_id -> seq
  lastTypingSentAt: 0,
  presenceTimer: null,
};

let sharing = null;
let tabs = null;
let poller = null;

// ---------------------------------------------------------------------------------
// Small DOM helpers (textContent only: message bodies are never parsed as HTML)

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function showError(el, errOrText) {
  el.textContent = typeof errOrText === "string" ? errOrText : api.describeError(errOrText);
  el.hidden = false;
}

function clearError(el) {
  el.textContent = "";
  el.hidden = true;
}

function announce(text) {
  const region = $("live-region");
  region.append(h("p", { text }));
  while (region.childElementCount > 3) region.firstElementChild.remove();
}

function isWide() {
  return wideQuery.matches;
}

function codePoints(text) {
  return [...text].length;
}

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const now = new Date();
  if (date.toDateString() === now.toDateString()) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return date.toLocaleDateString([], { month: "short", day: "numeric" });
}

function formatFull(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

// ---------------------------------------------------------------------------------
// Users, titles, presence

function cacheUser(user) {
  if (user && typeof user.id === "number") state.users.set(user.id, user);
}

function fetchUser(userId) {
  if (state.users.has(userId)) return Promise.resolve(state.users.get(userId));
  if (state.userRequests.has(userId)) return state.userRequests.get(userId);
  // Do not hammer the server from every render after a failure.
  if (Date.now() - (state.userFailedAt.get(userId) || 0) < 30_000) return Promise.resolve(null);
  const promise = api
    .getUser(userId)
    .then((res) => {
      cacheUser(res.user);
      scheduleRender();
      return res.user;
    })
    .catch(() => {
      state.userFailedAt.set(userId, Date.now());
      return null;
    })
    .finally(() => state.userRequests.delete(userId));
  state.userRequests.set(userId, promise);
  return promise;
}

function userName(userId) {
  if (state.me && userId === state.me.id) return "You";
  const user = state.users.get(userId);
  if (user) return user.display_name || `@${user.handle}`;
  fetchUser(userId);
  return "…";
}

function peerId(conv) {
  if (!conv || conv.kind !== "direct") return null;
  if (!Array.isArray(conv.members)) {
    refreshConversation(conv.id);
    return null;
  }
  const other = conv.members.find((m) => m.user_id !== state.me.id);
  return other ? other.user_id : null;
}

function conversationTitle(conv) {
  if (!conv) return "";
  if (conv.kind === "group") return conv.title || "Untitled group";
  if (conv.title) return conv.title;
  const peer = peerId(conv);
  if (peer !== null) return userName(peer);
  if (Array.isArray(conv.members)) return state.me.display_name || `@${state.me.handle}`;
  return "…";
}

function presenceDot(userId, testid = "presence-dot") {
  const info =
    state.me && userId === state.me.id
      ? { status: state.connection === "live" ? "online" : "offline" }
      : state.presence.get(userId);
  const status = info ? info.status : "offline";
  let label = status === "online" ? "Online" : "Offline";
  if (status !== "online" && info && info.last_seen) {
    label += `, last seen ${formatFull(info.last_seen)}`;
  }
  return h("span", {
    class: `presence-dot ${status}`,
    role: "img",
    "aria-label": label,
    title: label,
    dataset: { testid, status, userId: String(userId) },
  });
}

function directPeers() {
  const ids = new Set();
  for (const conv of state.conversations.values()) {
    const peer = peerId(conv);
    if (peer !== null) ids.add(peer);
  }
  return [...ids];
}

async function loadPresence(ids = directPeers()) {
  for (let i = 0; i < ids.length; i += PRESENCE_BATCH) {
    try {
      const res = await api.getPresence(ids.slice(i, i + PRESENCE_BATCH));
      for (const [userId, info] of Object.entries(res.presence || {})) {
        state.presence.set(Number(userId), info);
      }
    } catch {
      return; // decorative: try again on the next refresh
    }
  }
  scheduleRender();
}

// ---------------------------------------------------------------------------------
// Conversations

function upsertConversation(conv) {
  const existing = state.conversations.get(conv.id);
  if (existing) {
    const members = conv.members === undefined ? existing.members : conv.members;
    Object.assign(existing, conv, { members });
    return existing;
  }
  state.conversations.set(conv.id, conv);
  return conv;
}

function myMember(conv) {
  return Array.isArray(conv.members)
    ? conv.members.find((m) => m.user_id === state.me.id)
    : undefined;
}

/** GET /v1/conversations/{id} (deduplicated); updates state, or drops it on 404. */
function refreshConversation(conversationId) {
  if (state.conversationRequests.has(conversationId)) {
    return state.conversationRequests.get(conversationId);
  }
  const promise = api
    .getConversation(conversationId)
    .then((res) => {
      const conv = upsertConversation(res.conversation);
      scheduleRender();
      if (state.chat && state.chat.id === conv.id) refreshTicks();
      const peer = peerId(conv);
      if (peer !== null && !state.presence.has(peer)) loadPresence();
      return conv;
    })
    .catch((err) => {
      if (err instanceof api.ApiError && err.status === 404) {
        removeConversation(conversationId, null);
      }
      return null;
    })
    .finally(() => state.conversationRequests.delete(conversationId));
  state.conversationRequests.set(conversationId, promise);
  return promise;
}

function removeConversation(conversationId, notice) {
  const conv = state.conversations.get(conversationId);
  const isOpen = state.chat && state.chat.id === conversationId;
  // Already gone (the event and our own request's answer both get here): say it once.
  if (!conv && !isOpen) return;
  const title = conv ? conversationTitle(conv) : "The conversation";
  state.conversations.delete(conversationId);
  state.typing.delete(conversationId);
  for (const item of [...state.outbox.values()]) {
    if (item.conversation_id === conversationId) state.outbox.delete(item.client_msg_id);
  }
  persistOutbox();
  if (isOpen) {
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
    closeChat();
  }
  if (notice) {
    const text = notice.replace("{title}", title);
    showError($("list-error"), text);
    announce(text);
  }
  scheduleRender();
}

function activityTime(conv) {
  const at = conv.last_message ? conv.last_message.created_at : conv.created_at;
  return Date.parse(at) || 0;
}

function sortedConversations() {
  return [...state.conversations.values()].sort(
    (a, b) => activityTime(b) - activityTime(a) || b.id - a.id,
  );
}

async function loadConversations({ reset }) {
  const generation = reset ? ++state.listGeneration : state.listGeneration;
  try {
    const res = await api.listConversations(reset ? undefined : state.listNext, LIST_PAGE_SIZE);
    if (generation !== state.listGeneration || !state.session) return;
    if (reset) {
      // Keep the open conversation even when it is not on the first page.
      const keep = state.chat ? state.conversations.get(state.chat.id) : null;
      state.conversations = new Map();
      if (keep) state.conversations.set(keep.id, keep);
    }
    for (const conv of res.conversations || []) upsertConversation(conv);
    state.listNext = res.next ?? null;
    clearError($("list-error"));
    scheduleRender();
    loadPresence();
    if (tabs && tabs.isLeader) {
      // Whatever arrived while no poll was running is delivered now.
      for (const conv of res.conversations || []) {
        const last = conv.last_message;
        if (!last || last.sender_id === state.me.id) continue;
        const me = myMember(conv);
        if (me ? (me.delivered_seq || 0) < last.seq : conv.unread_count > 0) {
          postDelivered(conv.id, last.seq);
        }
      }
    }
  } catch (err) {
    if (generation === state.listGeneration && state.session) showError($("list-error"), err);
  }
}

function renderList() {
  const ul = $("conversation-list");
  const focusedId = document.activeElement && document.activeElement.dataset.conversationId;
  const convs = sortedConversations();
  const existing = new Map([...ul.children].map((li) => [Number(li.dataset.conversationId), li]));
  const wanted = [];
  for (const conv of convs) {
    let li = existing.get(conv.id);
    if (!li) {
      li = h("li", { dataset: { conversationId: String(conv.id) } });
      li.append(
        h("button", {
          type: "button",
          class: "conv",
          dataset: { testid: "conversation-item", conversationId: String(conv.id) },
          onclick: () => navigateToChat(conv.id),
        }),
      );
    }
    fillConversationButton(li.firstElementChild, conv);
    wanted.push(li);
  }
  // Reorder in place so that unchanged items (and focus) are left alone.
  wanted.forEach((li, index) => {
    if (ul.children[index] !== li) ul.insertBefore(li, ul.children[index] || null);
  });
  for (const [id, li] of existing) if (!state.conversations.has(id)) li.remove();
  if (focusedId && document.activeElement === document.body) {
    const again = ul.querySelector(`button[data-conversation-id="${focusedId}"]`);
    if (again) again.focus();
  }
  $("conversation-empty").hidden = convs.length > 0;
  $("load-more-conversations").hidden = state.listNext === null;
}

function fillConversationButton(button, conv) {
  const unread = conv.unread_count || 0;
  const last = conv.last_message;
  let preview = "No messages yet";
  if (last) {
    const prefix =
      last.sender_id === state.me.id
        ? "You: "
        : conv.kind === "group"
          ? `${userName(last.sender_id)}: `
          : "";
    preview = prefix + last.body.replace(/\s+/g, " ");
  }
  const peer = peerId(conv);
  const typers = state.typing.get(conv.id);
  if (typers && typers.size) preview = "typing…";
  button.dataset.kind = conv.kind;
  button.dataset.unread = String(unread);
  if (state.chat && state.chat.id === conv.id) button.setAttribute("aria-current", "page");
  else button.removeAttribute("aria-current");
  button.replaceChildren(
    h(
      "span",
      { class: "conv-top" },
      peer !== null ? presenceDot(peer) : null,
      h("span", {
        class: "conv-title",
        text: conversationTitle(conv),
        dataset: { testid: "conversation-title" },
      }),
      last
        ? h("time", {
            class: "conv-time",
            datetime: last.created_at,
            text: formatTime(last.created_at),
          })
        : null,
    ),
    h(
      "span",
      { class: "conv-bottom" },
      h("span", {
        class: "conv-preview",
        text: preview,
        dataset: { testid: "conversation-preview" },
      }),
      unread > 0
        ? h(
            "span",
            { class: "badge", dataset: { testid: "unread-badge" } },
            h("span", { "aria-hidden": "true", text: unread > 999 ? "999+" : String(unread) }),
            h("span", { class: "visually-hidden", text: `${unread} unread` }),
          )
        : null,
    ),
  );
}

// ---------------------------------------------------------------------------------
// Rendering, coalesced

let renderScheduled = false;

function scheduleRender() {
  if (renderScheduled) return;
  renderScheduled = true;
  setTimeout(() => {
    renderScheduled = false;
    if (!state.session) return;
    renderList();
    renderChatChrome();
    renderTyping();
    refreshSenderNames();
  }, 0);
}

function renderMe() {
  const me = state.me;
  $("me-name").textContent = me ? `${me.display_name || me.handle} (@${me.handle})` : "";
}

function renderConnection() {
  const el = $("connection-status");
  const labels = {
    connecting: "Connecting…",
    live: "Online",
    reconnecting: "Reconnecting…",
    offline: "Offline",
    unauthorized: "Logged out",
  };
  el.dataset.state = state.connection;
  el.dataset.role = tabs && tabs.isLeader ? "leader" : "follower";
  el.textContent = labels[state.connection] || state.connection;
}

// ---------------------------------------------------------------------------------
// Chat view

function setView(view) {
  $("app-view").dataset.view = view;
}

function navigateToChat(conversationId) {
  const target = `#/c/${conversationId}`;
  if (location.hash === target) {
    route();
    return;
  }
  state.chatPushed = true;
  location.hash = target; // hashchange -> route()
}

function route() {
  if (!state.session) return;
  const match = /^#\/c\/(\d+)$/.exec(location.hash);
  if (match) {
    openChat(Number(match[1]));
  } else {
    const leaving = state.chat ? state.chat.id : null;
    closeChat();
    state.chatPushed = false;
    if (leaving !== null) {
      const button = document.querySelector(
        `#conversation-list button[data-conversation-id="${leaving}"]`,
      );
      if (button) button.focus();
    }
  }
}

function closeChat() {
  state.chatGeneration += 1;
  state.chat = null;
  $("chat").hidden = true;
  $("chat-placeholder").hidden = false;
  $("message-list").replaceChildren();
  setView("list");
  scheduleRender();
}

async function openChat(conversationId) {
  setView("chat");
  if (state.chat && state.chat.id === conversationId) return;
  const generation = ++state.chatGeneration;
  state.chat = {
    id: conversationId,
    generation,
    messages: new Map(), // seq -> Message
    elements: new Map(), // seq or "c:<client_msg_id>" -> <li>
    nextBefore: null,
    loaded: false,
    loadingOlder: false,
    fillingGap: false,
    early: [], // messages from events that arrived while the first page loaded
  };
  state.lastTypingSentAt = 0;
  $("chat").dataset.conversationId = String(conversationId);
  $("chat").hidden = false;
  $("chat-placeholder").hidden = true;
  $("message-list").replaceChildren();
  $("members-panel").hidden = true;
  $("members-button").setAttribute("aria-expanded", "false");
  $("load-older-button").hidden = true;
  $("history-start").hidden = true;
  clearError($("chat-error"));
  clearError($("list-error"));
  $("message-input").value = "";
  renderChatChrome();
  renderTyping();
  scheduleRender();
  if (isWide()) $("message-input").focus();
  else $("chat-title").focus();

  const details = refreshConversation(conversationId);
  let page;
  try {
    page = await api.listMessages(conversationId, { limit: HISTORY_PAGE_SIZE });
  } catch (err) {
    if (generation !== state.chatGeneration) return;
    if (err instanceof api.ApiError && err.status === 404) {
      removeConversation(
        conversationId,
        "That conversation does not exist or you are not a member.",
      );
    } else {
      showError($("chat-error"), err);
    }
    return;
  }
  await details;
  if (generation !== state.chatGeneration) return;
  const chat = state.chat;
  chat.nextBefore = page.next_before ?? null;
  chat.loaded = true;
  addMessages(page.messages || []);
  addMessages(chat.early); // seq decides the place; duplicates replace themselves
  chat.early = [];
  renderPendingForChat();
  updateHistoryEdge();
  scrollToBottom();
  maybeMarkRead();
}

function renderChatChrome() {
  const chat = state.chat;
  if (!chat) return;
  const conv = state.conversations.get(chat.id);
  const title = conv ? conversationTitle(conv) : "…";
  $("chat-title").textContent = title;
  document.title = `${title} · Messenger`;
  const dotHolder = $("chat-presence");
  const peer = peerId(conv);
  if (peer !== null) {
    const dot = presenceDot(peer, "chat-presence");
    dotHolder.replaceWith(Object.assign(dot, { id: "chat-presence" }));
  } else {
    dotHolder.hidden = true;
  }
  renderMembersPanel();
}

function renderMembersPanel() {
  const chat = state.chat;
  const conv = chat && state.conversations.get(chat.id);
  if (!conv || $("members-panel").hidden) return;
  const isGroup = conv.kind === "group";
  const isOwner = conv.owner_id === state.me.id;
  const members = Array.isArray(conv.members) ? conv.members : [];
  $("members-list").replaceChildren(
    ...members.map((m) =>
      h(
        "li",
        { class: "member", dataset: { testid: "member", userId: String(m.user_id) } },
        presenceDot(m.user_id, "member-presence"),
        h("span", { class: "member-name", text: userName(m.user_id) }),
        m.role === "owner" ? h("span", { class: "role", text: "owner" }) : null,
        isGroup && isOwner && m.user_id !== state.me.id
          ? h("button", {
              type: "button",
              class: "link",
              text: "Remove",
              "aria-label": `Remove ${userName(m.user_id)}`,
              dataset: { testid: "remove-member-button" },
              onclick: () => removeMemberClicked(conv.id, m.user_id),
            })
          : null,
      ),
    ),
  );
  $("rename-form").hidden = !isGroup;
  $("add-member-form").hidden = !isGroup;
  $("leave-button").hidden = !isGroup;
  $("delete-conversation-button").hidden = !(isGroup && isOwner);
  if (isGroup && document.activeElement !== $("rename-title"))
    $("rename-title").value = conv.title || "";
}

function updateHistoryEdge() {
  const chat = state.chat;
  if (!chat || !chat.loaded) return;
  $("load-older-button").hidden = chat.nextBefore === null;
  $("history-start").hidden = chat.nextBefore !== null;
}

function isNearBottom() {
  const scroller = $("message-scroller");
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < STICK_TO_BOTTOM_PX;
}

function scrollToBottom() {
  const scroller = $("message-scroller");
  scroller.scrollTop = scroller.scrollHeight;
}

function ownStatus(conv, seq) {
  const others =
    conv && Array.isArray(conv.members)
      ? conv.members.filter((m) => m.user_id !== state.me.id)
      : [];
  if (others.length === 0) return "sent";
  let read = true;
  let delivered = true;
  for (const m of others) {
    const readSeq = m.read_seq || 0;
    if (readSeq < seq) read = false;
    if (Math.max(m.delivered_seq || 0, readSeq) < seq) delivered = false;
  }
  if (read) return "read";
  return delivered ? "delivered" : "sent";
}

const STATUS_LABELS = {
  pending: "Sending…",
  failed: "Not sent",
  sent: "Sent",
  delivered: "Delivered",
  read: "Read",
};

function statusMark(status) {
  const glyph = { sent: "✓", delivered: "✓✓", read: "✓✓" }[status] || "🕓";
  return h(
    "span",
    {
      class: `ticks ${status}`,
      title: STATUS_LABELS[status],
      dataset: { testid: "message-status" },
    },
    h("span", { "aria-hidden": "true", text: status === "failed" ? "!" : glyph }),
    h("span", { class: "visually-hidden", text: STATUS_LABELS[status] }),
  );
}

function messageElement(message, conv) {
  const own = message.sender_id === state.me.id;
  const status = own ? ownStatus(conv, message.seq) : "received";
  const showSender = !own && conv && conv.kind === "group";
  return h(
    "li",
    {
      class: `msg ${own ? "own" : "theirs"}`,
      dataset: {
        testid: "message",
        seq: String(message.seq),
        clientMsgId: message.client_msg_id,
        senderId: String(message.sender_id),
        own: String(own),
        status,
      },
    },
    showSender
      ? h("span", {
          class: "msg-sender",
          text: userName(message.sender_id),
          dataset: { testid: "message-sender", userId: String(message.sender_id) },
        })
      : null,
    h("span", { class: "msg-body", text: message.body, dataset: { testid: "message-body" } }),
    h(
      "span",
      { class: "msg-meta" },
      h("time", {
        datetime: message.created_at,
        title: formatFull(message.created_at),
        text: formatTime(message.created_at),
        dataset: { testid: "message-time" },
      }),
      own ? statusMark(status) : null,
    ),
  );
}

function pendingElement(item) {
  const queue = state.sendQueues.get(item.conversation_id);
  let note = null;
  if (item.status === "failed") {
    let text = item.error || "Not sent.";
    if (!item.permanent && queue && queue.retryAt) {
      const secs = Math.max(1, Math.round((queue.retryAt - Date.now()) / 1000));
      text += ` Retrying in ${secs} s.`;
    }
    note = h("span", { class: "msg-error", text, dataset: { testid: "message-error" } });
  }
  return h(
    "li",
    {
      class: `msg own unsent ${item.status}`,
      dataset: {
        testid: "message",
        clientMsgId: item.client_msg_id,
        senderId: String(state.me.id),
        own: "true",
        status: item.status,
      },
    },
    h("span", { class: "msg-body", text: item.body, dataset: { testid: "message-body" } }),
    h(
      "span",
      { class: "msg-meta" },
      note,
      item.status === "failed"
        ? h("button", {
            type: "button",
            class: "link",
            text: "Retry",
            dataset: { testid: "retry-button" },
            onclick: () => retryNow(item),
          })
        : null,
      item.status === "failed"
        ? h("button", {
            type: "button",
            class: "link",
            text: "Discard",
            dataset: { testid: "discard-button" },
            onclick: () => discardUnsent(item),
          })
        : null,
      statusMark(item.status),
    ),
  );
}

/** Insert or update confirmed messages of the open chat, in seq order. */
function addMessages(messages) {
  const chat = state.chat;
  if (!chat) return;
  const list = $("message-list");
  const conv = state.conversations.get(chat.id);
  for (const message of messages) {
    if (message.conversation_id !== chat.id) continue;
    const pendingKey = `c:${message.client_msg_id}`;
    if (message.sender_id === state.me.id && chat.elements.has(pendingKey)) {
      chat.elements.get(pendingKey).remove();
      chat.elements.delete(pendingKey);
    }
    const el = messageElement(message, conv);
    const old = chat.elements.get(message.seq);
    chat.messages.set(message.seq, message);
    chat.elements.set(message.seq, el);
    if (old) {
      old.replaceWith(el);
      continue;
    }
    // Find the first confirmed element with a higher seq, scanning from the end (new
    // messages are usually the newest); unsent ones always stay last.
    let before = null;
    for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (!node.dataset.seq) {
        before = node;
        continue;
      }
      if (Number(node.dataset.seq) > message.seq) before = node;
      else break;
    }
    list.insertBefore(el, before);
  }
}

function highestSeq(chat) {
  let max = 0;
  for (const seq of chat.messages.keys()) if (seq > max) max = seq;
  return max;
}

function refreshTicks() {
  const chat = state.chat;
  if (!chat) return;
  const conv = state.conversations.get(chat.id);
  for (const el of $("message-list").querySelectorAll('li[data-own="true"][data-seq]')) {
    const status = ownStatus(conv, Number(el.dataset.seq));
    if (el.dataset.status === status) continue;
    el.dataset.status = status;
    el.querySelector('[data-testid="message-status"]').replaceWith(statusMark(status));
  }
}

function refreshSenderNames() {
  for (const el of document.querySelectorAll('[data-testid="message-sender"]')) {
    const name = userName(Number(el.dataset.userId));
    if (el.textContent !== name) el.textContent = name;
  }
}

function renderPendingForChat() {
  const chat = state.chat;
  if (!chat) return;
  for (const item of state.outbox.values()) {
    if (item.conversation_id === chat.id) renderPending(item);
  }
}

function renderPending(item) {
  const chat = state.chat;
  if (!chat || chat.id !== item.conversation_id) return;
  const key = `c:${item.client_msg_id}`;
  const el = pendingElement(item);
  const old = chat.elements.get(key);
  chat.elements.set(key, el);
  if (old) old.replaceWith(el);
  else $("message-list").append(el);
}

async function loadOlder() {
  const chat = state.chat;
  if (!chat || !chat.loaded || chat.loadingOlder || chat.nextBefore === null) return;
  chat.loadingOlder = true;
  const scroller = $("message-scroller");
  try {
    const page = await api.listMessages(chat.id, {
      before: chat.nextBefore,
      limit: HISTORY_PAGE_SIZE,
    });
    if (chat !== state.chat) return;
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    addMessages(page.messages || []);
    chat.nextBefore = page.next_before ?? null;
    scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep the view still
    updateHistoryEdge();
  } catch (err) {
    if (chat === state.chat) showError($("chat-error"), err);
  } finally {
    chat.loadingOlder = false;
  }
}

/** Fetch messages newer than the newest shown, page by page (after a gap or resync). */
async function fillGap() {
  const chat = state.chat;
  if (!chat || !chat.loaded) return;
  if (chat.fillingGap) {
    chat.fillAgain = true;
    return;
  }
  chat.fillingGap = true;
  try {
    do {
      chat.fillAgain = false;
      let after = highestSeq(chat);
      for (;;) {
        const page = await api.listMessages(chat.id, { after, limit: HISTORY_PAGE_SIZE });
        if (chat !== state.chat) return;
        const stick = isNearBottom();
        addMessages(page.messages || []);
        for (const m of page.messages || []) noteMessageInList(m);
        if (stick) scrollToBottom();
        if (page.next_after == null) break;
        after = page.next_after;
      }
    } while (chat.fillAgain);
    maybeMarkRead();
  } catch {
    /* the next event or resync tries again */
  } finally {
    chat.fillingGap = false;
  }
}

// ---------------------------------------------------------------------------------
// Receipts

function isChatActive(conversationId) {
  return Boolean(
    state.chat &&
    state.chat.id === conversationId &&
    state.chat.loaded &&
    document.visibilityState === "visible" &&
    document.hasFocus() &&
    (isWide() || $("app-view").dataset.view === "chat"),
  );
}

function maybeMarkRead() {
  const chat = state.chat;
  if (!chat || !isChatActive(chat.id)) return;
  const seq = highestSeq(chat);
  const conv = state.conversations.get(chat.id);
  if (!seq || !conv) return;
  const already = Math.max(state.readPosted.get(chat.id) || 0, conv.read_seq || 0);
  if (conv.unread_count) {
    conv.unread_count = 0;
    scheduleRender();
  }
  if (seq <= already) return;
  state.readPosted.set(chat.id, seq);
  conv.read_seq = seq;
  const me = myMember(conv);
  if (me) me.read_seq = Math.max(me.read_seq || 0, seq);
  api.postReceipt(chat.id, "read", seq).catch(() => {
    if (state.readPosted.get(chat.id) === seq) state.readPosted.delete(chat.id);
  });
}

function postDelivered(conversationId, seq) {
  if (seq <= (state.deliveredPosted.get(conversationId) || 0)) return;
  state.deliveredPosted.set(conversationId, seq);
  api.postReceipt(conversationId, "delivered", seq).catch(() => {
    // Forget it so that the next message or resync sends it again.
    if (state.deliveredPosted.get(conversationId) === seq) {
      state.deliveredPosted.delete(conversationId);
    }
  });
}

// ---------------------------------------------------------------------------------
// Events (from this tab's poll, or forwarded by the leader tab)

function applyEvents(events) {
  for (const event of events) {
    if (typeof event.id === "number") {
      if (event.id <= state.lastEventId) continue; // already applied
      state.lastEventId = event.id;
    }
    try {
      applyEvent(event);
    } catch (err) {
      console.error("messenger: cannot apply event", event.type, err);
    }
  }
}

function applyEvent(event) {
  switch (event.type) {
    case "message":
      onMessage(event.message, { announceIt: true });
      break;
    case "receipt":
      onReceipt(event);
      break;
    case "member_added":
      onMemberAdded(event);
      break;
    case "member_removed":
      onMemberRemoved(event);
      break;
    case "conversation_updated":
      onConversationUpdated(event.conversation);
      break;
    case "conversation_deleted":
      removeConversation(event.conversation_id, "“{title}” was deleted.");
      break;
    case "typing":
      onTyping(event);
      break;
    case "presence":
      state.presence.set(event.user_id, { status: event.status, last_seen: event.last_seen });
      scheduleRender();
      break;
    default:
      break; // the contract only grows: ignore what this client does not know
  }
}

/** Update the list entry for a message; true when it is newer than what we had. */
function noteMessageInList(message) {
  const conv = state.conversations.get(message.conversation_id);
  if (!conv) return false;
  const isNew = message.seq > (conv.last_seq || 0);
  if (isNew) conv.last_seq = message.seq;
  if (!conv.last_message || message.seq >= conv.last_message.seq) conv.last_message = message;
  if (message.sender_id === state.me.id) {
    conv.unread_count = 0; // writing in a conversation means having read it
  } else if (isNew && !isChatActive(conv.id)) {
    const readSeq = conv.read_seq || 0;
    if (message.seq > readSeq) conv.unread_count = (conv.unread_count || 0) + 1;
  }
  scheduleRender();
  return isNew;
}

function onMessage(message, { announceIt }) {
  const conversationId = message.conversation_id;
  // A message of ours confirmed by any route (our POST, or an event from another tab or
  // device) ends the life of the matching unsent copy.
  if (message.sender_id === state.me.id) {
    const item = state.outbox.get(message.client_msg_id);
    if (item && item.conversation_id === conversationId) {
      state.outbox.delete(item.client_msg_id);
      persistOutbox();
    }
  }
  clearTyping(conversationId, message.sender_id);
  const known = state.conversations.has(conversationId);
  const isNew = known ? noteMessageInList(message) : false;
  if (!known) refreshConversation(conversationId); // a chat someone just started with us

  const chat = state.chat;
  if (chat && chat.id === conversationId && !chat.loaded) chat.early.push(message);
  if (chat && chat.id === conversationId && chat.loaded) {
    const stick = isNearBottom() || message.sender_id === state.me.id;
    const newest = highestSeq(chat);
    addMessages([message]);
    if (stick) scrollToBottom();
    if (message.seq > newest + 1 && newest > 0) fillGap();
    maybeMarkRead();
  }
  if (announceIt && (isNew || !known) && message.sender_id !== state.me.id) {
    const conv = state.conversations.get(conversationId);
    const inOpenChat = chat && chat.id === conversationId;
    const where =
      conv && conv.kind === "group" && !inOpenChat ? ` in ${conversationTitle(conv)}` : "";
    announce(`${userName(message.sender_id)}${where}: ${message.body}`);
  }
}

function onReceipt(event) {
  const conv = state.conversations.get(event.conversation_id);
  if (!conv) return;
  const field = event.receipt === "read" ? "read_seq" : "delivered_seq";
  if (Array.isArray(conv.members)) {
    const member = conv.members.find((m) => m.user_id === event.user_id);
    if (member) member[field] = Math.max(member[field] || 0, event.seq);
    else refreshConversation(conv.id);
  }
  if (event.user_id === state.me.id && event.receipt === "read") {
    // Read on another tab or device.
    conv.read_seq = Math.max(conv.read_seq || 0, event.seq);
    const lastSeq = conv.last_seq || 0;
    conv.unread_count =
      event.seq >= lastSeq ? 0 : Math.min(conv.unread_count || 0, lastSeq - event.seq);
    scheduleRender();
  }
  if (state.chat && state.chat.id === conv.id) refreshTicks();
}

function onMemberAdded(event) {
  // Added ourselves: a new conversation for the list. Otherwise: new member list.
  refreshConversation(event.conversation_id);
}

function onMemberRemoved(event) {
  if (event.user_id === state.me.id) {
    const notice =
      event.by === state.me.id ? "You left “{title}”." : "You were removed from “{title}”.";
    removeConversation(event.conversation_id, notice);
    return;
  }
  const conv = state.conversations.get(event.conversation_id);
  if (conv && Array.isArray(conv.members)) {
    conv.members = conv.members.filter((m) => m.user_id !== event.user_id);
    clearTyping(conv.id, event.user_id);
    scheduleRender();
    if (state.chat && state.chat.id === conv.id) refreshTicks();
  }
}

function onConversationUpdated(snapshot) {
  if (!snapshot || typeof snapshot.id !== "number") return;
  const conv = state.conversations.get(snapshot.id);
  if (!conv) {
    refreshConversation(snapshot.id);
    return;
  }
  // Only the shared fields: read_seq and unread_count in the snapshot are the actor's.
  for (const key of ["title", "owner_id", "kind"]) {
    if (key in snapshot) conv[key] = snapshot[key];
  }
  if (Array.isArray(snapshot.members)) conv.members = snapshot.members;
  scheduleRender();
  if (state.chat && state.chat.id === conv.id) refreshTicks();
}

// ---------------------------------------------------------------------------------
// Typing

function onTyping(event) {
  if (event.user_id === state.me.id) return;
  let typers = state.typing.get(event.conversation_id);
  if (!typers) {
    typers = new Map();
    state.typing.set(event.conversation_id, typers);
  }
  clearTimeout(typers.get(event.user_id));
  typers.set(
    event.user_id,
    setTimeout(() => clearTyping(event.conversation_id, event.user_id), TYPING_SHOW_MS),
  );
  scheduleRender();
}

function clearTyping(conversationId, userId) {
  const typers = state.typing.get(conversationId);
  if (!typers || !typers.has(userId)) return;
  clearTimeout(typers.get(userId));
  typers.delete(userId);
  if (!typers.size) state.typing.delete(conversationId);
  scheduleRender();
}

function renderTyping() {
  const el = $("typing-indicator");
  const chat = state.chat;
  const typers = chat ? state.typing.get(chat.id) : null;
  let text = "";
  if (typers && typers.size) {
    const names = [...typers.keys()].map((id) => userName(id));
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else text = `${names.length} people are typing…`;
  }
  if (el.textContent !== text) el.textContent = text;
  el.dataset.active = String(Boolean(text));
}

function composerInput() {
  const chat = state.chat;
  if (!chat || !$("message-input").value.trim()) return;
  const now = Date.now();
  if (now - state.lastTypingSentAt < TYPING_SEND_INTERVAL_MS) return;
  state.lastTypingSentAt = now;
  api.postTyping(chat.id).catch(() => {}); // ephemeral: losing one is fine
}

// ---------------------------------------------------------------------------------
// Sending: optimistic display, per-conversation queue, retry with the SAME client_msg_id

function outboxKey() {
  return `messenger.outbox.${state.me.id}`;
}

function persistOutbox() {
  if (!state.me) return;
  const items = [...state.outbox.values()].map(
    ({ conversation_id, client_msg_id, body, created_at }) => ({
      conversation_id,
      client_msg_id,
      body,
      created_at,
    }),
  );
  saveJson(outboxKey(), items);
}

function restoreOutbox() {
  state.outbox = new Map();
  for (const raw of loadJson(outboxKey(), [])) {
    if (!raw || typeof raw.client_msg_id !== "string") continue;
    state.outbox.set(raw.client_msg_id, {
      ...raw,
      status: "pending",
      error: null,
      permanent: false,
    });
  }
  for (const conversationId of new Set([...state.outbox.values()].map((i) => i.conversation_id))) {
    pumpQueue(conversationId);
  }
}

function sendComposer() {
  const chat = state.chat;
  const input = $("message-input");
  const body = input.value;
  if (!chat || !body.trim()) return;
  if (codePoints(body) > MAX_BODY_CHARS) {
    showError($("chat-error"), `A message can have at most ${MAX_BODY_CHARS} characters.`);
    return;
  }
  clearError($("chat-error"));
  const item = {
    conversation_id: chat.id,
    client_msg_id: `w-${randomId(16)}`, // [A-Za-z0-9_-]{1,64} per API.md
    body,
    created_at: new Date().toISOString(),
    status: "pending",
    error: null,
    permanent: false,
  };
  state.outbox.set(item.client_msg_id, item);
  persistOutbox();
  input.value = "";
  state.lastTypingSentAt = 0;
  renderPending(item);
  scrollToBottom();
  pumpQueue(chat.id);
}

function sendQueue(conversationId) {
  let queue = state.sendQueues.get(conversationId);
  if (!queue) {
    queue = { busy: false, failures: 0, timer: null, retryAt: null };
    state.sendQueues.set(conversationId, queue);
  }
  return queue;
}

/**
 * Send the unsent messages of one conversation one at a time, oldest first, so that
 * they get seqs in the order they were written.
 */
async function pumpQueue(conversationId) {
  const queue = sendQueue(conversationId);
  if (queue.busy || !state.session) return;
  clearTimeout(queue.timer);
  queue.timer = null;
  queue.retryAt = null;
  const session = state.session;
  queue.busy = true;
  for (const item of state.outbox.values()) {
    if (item.conversation_id === conversationId && !item.permanent && item.status !== "pending") {
      item.status = "pending";
      item.error = null;
      renderPending(item);
    }
  }
  try {
    for (;;) {
      const item = [...state.outbox.values()].find(
        (i) => i.conversation_id === conversationId && !i.permanent,
      );
      if (!item) {
        queue.failures = 0;
        return;
      }
      item.status = "pending";
      item.error = null;
      renderPending(item);
      try {
        const res = await api.sendMessage(conversationId, item.client_msg_id, item.body);
        if (state.session !== session) return;
        queue.failures = 0;
        state.outbox.delete(item.client_msg_id);
        persistOutbox();
        onMessage(res.message, { announceIt: false });
        maybeMarkRead();
      } catch (err) {
        if (state.session !== session) return;
        if (!state.outbox.has(item.client_msg_id)) continue; // confirmed by an event meanwhile
        item.status = "failed";
        if (err.isTransient) {
          // No answer, or the server is overloaded: the message may or may not be stored.
          // Retrying with the same client_msg_id is safe either way (API.md).
          queue.failures += 1;
          const delay = backoffDelayMs(queue.failures, err.retryAfterSecs ?? null);
          queue.retryAt = Date.now() + delay;
          queue.timer = setTimeout(() => pumpQueue(conversationId), delay);
          item.error =
            err instanceof api.NetworkError
              ? "Not sent: no connection."
              : `Not sent: ${api.describeError(err)}`;
          markQueueFailed(conversationId);
        } else {
          // Refused (422, 403, 404...): retrying the same request would fail the same way.
          item.permanent = true;
          item.error = `Not sent: ${api.describeError(err)}`;
          renderPending(item);
          continue;
        }
        return;
      }
    }
  } finally {
    queue.busy = false;
  }
}

function markQueueFailed(conversationId) {
  // Everything queued behind the failed message waits with it: show them all as failed.
  for (const item of state.outbox.values()) {
    if (item.conversation_id !== conversationId || item.permanent) continue;
    item.status = "failed";
    if (!item.error) item.error = "Not sent.";
    renderPending(item);
  }
}

function retryNow(item) {
  if (!state.outbox.has(item.client_msg_id)) return;
  item.permanent = false;
  item.error = null;
  item.status = "pending";
  const queue = sendQueue(item.conversation_id);
  queue.failures = 0;
  renderPending(item);
  pumpQueue(item.conversation_id);
}

function retryAllQueues() {
  for (const conversationId of new Set([...state.outbox.values()].map((i) => i.conversation_id))) {
    const queue = sendQueue(conversationId);
    if (queue.timer) pumpQueue(conversationId);
  }
}

function discardUnsent(item) {
  state.outbox.delete(item.client_msg_id);
  persistOutbox();
  const chat = state.chat;
  const key = `c:${item.client_msg_id}`;
  if (chat && chat.elements.has(key)) {
    chat.elements.get(key).remove();
    chat.elements.delete(key);
  }
  $("message-input").focus();
}

// ---------------------------------------------------------------------------------
// Tabs, the poll and resync

function onLeadershipChange(isLeader) {
  if (isLeader) {
    poller = new Poller({
      getCursor: () => state.cursor,
      onEvents: (events, cursor) => {
        state.cursor = cursor;
        if (tabs) tabs.send({ kind: "events", events, cursor });
        applyEvents(events);
        // Delivered receipts come from the one tab that polls, not from every tab.
        const newest = new Map();
        for (const event of events) {
          const m = event.type === "message" ? event.message : null;
          if (m && m.sender_id !== state.me.id) {
            newest.set(m.conversation_id, Math.max(newest.get(m.conversation_id) || 0, m.seq));
          }
        }
        for (const [conversationId, seq] of newest) postDelivered(conversationId, seq);
      },
      onResync: (cursor, reason) => {
        state.cursor = cursor;
        if (tabs) tabs.send({ kind: "resync", cursor, reason });
        resync();
      },
      onStatus: (connection) => {
        state.connection = connection;
        if (tabs) tabs.send({ kind: "status", state: connection, cursor: state.cursor });
        renderConnection();
      },
    });
    poller.start();
  } else if (poller) {
    poller.stop();
    poller = null;
  }
  renderConnection();
}

function onTabMessage(msg) {
  switch (msg.kind) {
    case "events":
      if (msg.cursor) state.cursor = msg.cursor;
      applyEvents(msg.events || []);
      break;
    case "resync":
      state.cursor = msg.cursor || state.cursor;
      resync();
      break;
    case "status":
      if (tabs && tabs.isLeader) break; // a stale word from a previous leader
      state.connection = msg.state;
      if (msg.cursor) state.cursor = msg.cursor;
      renderConnection();
      break;
    case "status?":
      if (tabs && tabs.isLeader) {
        tabs.send({ kind: "status", state: state.connection, cursor: state.cursor });
      }
      break;
    default:
      break;
  }
}

function joinTabGroup(session) {
  tabs = new TabGroup(session.key, { onLeadershipChange, onMessage: onTabMessage });
  tabs.start();
  tabs.send({ kind: "status?" }); // the leader answers with its status and cursor
}

/** Rebuild from history: after a fresh cursor (start, takeover without one, 410). */
async function resync() {
  await loadConversations({ reset: true });
  const chat = state.chat;
  if (chat && chat.loaded) {
    try {
      const page = await api.listMessages(chat.id, { limit: HISTORY_PAGE_SIZE });
      if (chat !== state.chat) return;
      const messages = page.messages || [];
      const newest = highestSeq(chat);
      if (messages.length && newest && messages[0].seq > newest + 1) {
        // Too much was missed to stitch: show the newest page, scroll back for the rest.
        chat.messages.clear();
        for (const [key, el] of chat.elements) {
          if (typeof key === "number") {
            el.remove();
            chat.elements.delete(key);
          }
        }
        chat.nextBefore = page.next_before ?? null;
        updateHistoryEdge();
      }
      addMessages(messages);
      scrollToBottom();
      refreshConversation(chat.id);
      maybeMarkRead();
    } catch {
      /* shown on the next action */
    }
  }
  retryAllQueues();
}

// ---------------------------------------------------------------------------------
// Session life cycle

function showAuth(notice) {
  $("boot").hidden = true;
  $("app-view").hidden = true;
  $("auth-view").hidden = false;
  document.title = "Messenger";
  const noticeEl = $("auth-notice");
  noticeEl.textContent = notice || "";
  noticeEl.hidden = !notice;
  clearError($("auth-error"));
  $("login-password").value = "";
  $("login-handle").focus();
}

function startSession(session) {
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
  if (poller) poller.stop();
  poller = null;
  if (tabs) tabs.stop();
  tabs = null;
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
  });
  state.listGeneration += 1;
  state.chatGeneration += 1;
  $("conversation-list").replaceChildren();
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
  ]) {
    clearError($(id));
  }
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  showAuth(notice);
}

async function authSubmit(mode) {
  const handle = $("login-handle").value.trim().replace(/^@/, "");
  const password = $("login-password").value;
  const displayName = $("register-display-name").value.trim();
  const errorEl = $("auth-error");
  clearError(errorEl);
  $("auth-notice").hidden = true;
  if (!handle || !password) {
    showError(errorEl, "Enter a handle and a password.");
    return;
  }
  const buttons = [$("login-button"), $("register-button")];
  buttons.forEach((b) => (b.disabled = true));
  try {
    if (mode === "register") await api.register(handle, password, displayName || undefined);
    const res = await api.login(handle, password);
    $("login-password").value = "";
    startSession({ token: res.token, user: res.user, key: randomId(12) });
  } catch (err) {
    if (mode === "login" && err instanceof api.ApiError && err.status === 401) {
      showError(errorEl, "Wrong handle or password. New here? Choose “Create account”.");
    } else {
      showError(errorEl, err);
    }
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
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

// ---------------------------------------------------------------------------------
// Forms: new chats, groups, members

function cleanHandle(text) {
  return text.trim().replace(/^@/, "").toLowerCase();
}

async function findUser(handle) {
  try {
    return (await api.findUserByHandle(handle)).user;
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 404) {
      throw new Error(`No user with the handle “${handle}”.`);
    }
    throw err;
  }
}

async function newDirectSubmitted() {
  const input = $("new-direct-handle");
  const errorEl = $("new-direct-error");
  const handle = cleanHandle(input.value);
  clearError(errorEl);
  if (!handle) {
    showError(errorEl, "Enter the handle of the person to write to.");
    input.focus();
    return;
  }
  const button = $("new-direct-button");
  button.disabled = true;
  try {
    const user = await findUser(handle);
    cacheUser(user);
    const res = await api.createDirect(user.id);
    upsertConversation(res.conversation);
    input.value = "";
    scheduleRender();
    loadPresence();
    navigateToChat(res.conversation.id);
  } catch (err) {
    showError(errorEl, err);
    input.focus();
  } finally {
    button.disabled = false;
  }
}

async function groupSubmitted() {
  const titleInput = $("group-title");
  const membersInput = $("group-members");
  const errorEl = $("group-error");
  clearError(errorEl);
  const title = titleInput.value.trim();
  const handles = [
    ...new Set(membersInput.value.split(",").map(cleanHandle).filter(Boolean)),
  ].filter((handle) => handle !== state.me.handle);
  if (!title) {
    showError(errorEl, "Give the group a title.");
    titleInput.focus();
    return;
  }
  const button = $("create-group-button");
  button.disabled = true;
  try {
    const users = await Promise.all(handles.map(findUser));
    users.forEach(cacheUser);
    const res = await api.createGroup(
      title,
      users.map((u) => u.id),
    );
    upsertConversation(res.conversation);
    titleInput.value = "";
    membersInput.value = "";
    $("group-details").open = false;
    scheduleRender();
    navigateToChat(res.conversation.id);
  } catch (err) {
    showError(errorEl, err);
  } finally {
    button.disabled = false;
  }
}

async function membersAction(action) {
  const errorEl = $("members-error");
  clearError(errorEl);
  try {
    await action();
  } catch (err) {
    showError(errorEl, err);
  }
}

function removeMemberClicked(conversationId, userId) {
  membersAction(async () => {
    await api.removeMember(conversationId, userId);
    onMemberRemoved({ conversation_id: conversationId, user_id: userId, by: state.me.id });
  });
}

let deleteArmedTimer = null;

function deleteClicked() {
  const button = $("delete-conversation-button");
  const chat = state.chat;
  if (!chat) return;
  if (!button.dataset.armed) {
    // Two clicks instead of window.confirm(): works with keyboards, screen readers and
    // test drivers that dismiss dialogs.
    button.dataset.armed = "true";
    button.textContent = "Click again to delete";
    deleteArmedTimer = setTimeout(disarmDelete, 5000);
    return;
  }
  disarmDelete();
  const conversationId = chat.id;
  membersAction(async () => {
    await api.deleteConversation(conversationId);
    removeConversation(conversationId, "“{title}” was deleted.");
  });
}

function disarmDelete() {
  clearTimeout(deleteArmedTimer);
  const button = $("delete-conversation-button");
  delete button.dataset.armed;
  button.textContent = "Delete group";
}

// ---------------------------------------------------------------------------------
// Wiring

function bindUi() {
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    // Enter submits the form: someone who filled in a display name (only used for
    // new accounts) or pressed Enter in that field means "create my account".
    const displayName = $("register-display-name");
    const wantsAccount =
      displayName.value.trim() !== "" || document.activeElement === displayName;
    authSubmit(wantsAccount ? "register" : "login");
  });
  $("register-button").addEventListener("click", () => authSubmit("register"));
  $("logout-button").addEventListener("click", logoutClicked);
  $("switch-account-button").addEventListener("click", () =>
    endSession("Log in with another account. Other tabs keep their session.", {
      announceToTabs: false,
    }),
  );

  $("new-direct-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    newDirectSubmitted();
  });
  $("group-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    groupSubmitted();
  });
  $("load-more-conversations").addEventListener("click", () => loadConversations({ reset: false }));

  $("back-button").addEventListener("click", () => {
    if (state.chatPushed && history.length > 1) history.back();
    else location.hash = "#/";
  });
  window.addEventListener("hashchange", route);

  $("members-button").addEventListener("click", () => {
    const panel = $("members-panel");
    panel.hidden = !panel.hidden;
    $("members-button").setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) {
      renderMembersPanel();
      const conv = state.chat && state.conversations.get(state.chat.id);
      if (conv && Array.isArray(conv.members)) {
        loadPresence(conv.members.map((m) => m.user_id).filter((id) => id !== state.me.id));
      }
    }
  });
  $("rename-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const chat = state.chat;
    const title = $("rename-title").value.trim();
    if (!chat || !title) return;
    membersAction(async () => {
      const res = await api.renameConversation(chat.id, title);
      if (res && res.conversation) onConversationUpdated(res.conversation);
      else refreshConversation(chat.id);
    });
  });
  $("add-member-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const chat = state.chat;
    const handle = cleanHandle($("add-member-handle").value);
    if (!chat || !handle) return;
    membersAction(async () => {
      const user = await findUser(handle);
      cacheUser(user);
      await api.addMember(chat.id, user.id);
      $("add-member-handle").value = "";
      await refreshConversation(chat.id);
    });
  });
  $("leave-button").addEventListener("click", () => {
    const chat = state.chat;
    if (!chat) return;
    const conversationId = chat.id;
    membersAction(async () => {
      await api.removeMember(conversationId, state.me.id);
      removeConversation(conversationId, "You left “{title}”.");
    });
  });
  $("delete-conversation-button").addEventListener("click", deleteClicked);

  const scroller = $("message-scroller");
  scroller.addEventListener("scroll", () => {
    if (scroller.scrollTop < LOAD_OLDER_THRESHOLD_PX) loadOlder();
    if (isNearBottom()) maybeMarkRead();
  });
  $("load-older-button").addEventListener("click", loadOlder);

  const input = $("message-input");
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendComposer();
    input.focus();
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      sendComposer();
    }
  });
  input.addEventListener("input", composerInput);

  // Reading happens when the chat is visible and focused.
  document.addEventListener("visibilitychange", maybeMarkRead);
  window.addEventListener("focus", maybeMarkRead);
  wideQuery.addEventListener("change", maybeMarkRead);

  window.addEventListener("online", () => {
    if (poller) poller.retryNow();
    retryAllQueues();
  });
  window.addEventListener("offline", () => {
    if (tabs && tabs.isLeader) {
      state.connection = "offline";
      renderConnection();
    }
  });
  // Closing, freezing or moving the tab to the back/forward cache hands the poll to
  // another tab at once (a frozen leader would otherwise keep the lock and poll nothing).
  const suspend = () => {
    if (tabs) tabs.stop();
    tabs = null;
  };
  const revive = () => {
    if (!state.session || tabs) return;
    joinTabGroup(state.session);
    resync();
  };
  window.addEventListener("pagehide", suspend);
  document.addEventListener("freeze", suspend);
  window.addEventListener("pageshow", (ev) => {
    if (ev.persisted) revive();
  });
  document.addEventListener("resume", revive);
}

async function boot() {
  bindUi();
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

boot();
