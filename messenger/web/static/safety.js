// Safety and per-conversation choices: message requests (Accept / Block / Delete),
// blocking from a chat, mute and archive, and people search when starting a chat.

import * as api from "./api.js";
import { peerId, removeConversation, upsertConversation } from "./conversations.js";
import { $, clearError, h, showError } from "./dom.js";
import { loadPresence } from "./presence.js";
import { scheduleRender } from "./render.js";
import { navigateToChat } from "./router.js";
import { state } from "./state.js";
import { cacheUser } from "./users.js";

// People search waits this long after the last keystroke before asking.
const SEARCH_DEBOUNCE_MS = 200;
const SEARCH_RESULTS = 8;

let searchTimer = null;
let searchGeneration = 0;

/** GET /v1/blocks into state.blocked (who this user blocked). */
export async function loadBlocks() {
  try {
    const res = await api.listBlocks();
    state.blocked = new Set((res.users || []).map((u) => u.id));
    (res.users || []).forEach(cacheUser);
    scheduleRender();
  } catch {
    /* decorative until the next start: the server enforces blocks anyway */
  }
}

function errorTarget() {
  return state.chat ? $("chat-error") : $("list-error");
}

async function run(action) {
  const target = errorTarget();
  clearError(target);
  try {
    await action();
  } catch (err) {
    showError(target, err);
  }
}

export async function accept(conv) {
  await run(async () => {
    await api.acceptRequest(conv.id);
    conv.request = false;
    scheduleRender();
    loadPresence();
  });
}

export async function setBlocked(userId, blocked) {
  await run(async () => {
    if (blocked) await api.blockUser(userId);
    else await api.unblockUser(userId);
    if (blocked) state.blocked.add(userId);
    else state.blocked.delete(userId);
    scheduleRender();
  });
}

/** Delete a request: leave a group; archive a direct one (it cannot be left). */
export async function deleteRequest(conv) {
  await run(async () => {
    if (conv.kind === "group") {
      await api.removeMember(conv.id, state.me.id);
      removeConversation(conv.id, null);
    } else {
      const res = await api.updateMySettings(conv.id, { archived: true });
      upsertConversation(res.conversation);
    }
    scheduleRender();
  });
}

async function blockRequest(conv) {
  const peer = conv.kind === "direct" ? peerId(conv) : null;
  const by = peer ?? (conv.owner_id !== state.me.id ? conv.owner_id : null);
  if (by !== null && by !== undefined) await setBlocked(by, true);
  await deleteRequest(conv);
}

/** The Accept / Block / Delete buttons beside a request in the list. */
export function requestActions(conv) {
  const current = () => state.conversations.get(conv.id) || conv;
  return h(
    "div",
    { class: "request-actions", dataset: { testid: "request-actions" } },
    h("button", {
      type: "button",
      class: "primary",
      text: "Accept",
      dataset: { testid: "request-accept" },
      onclick: () => accept(current()),
    }),
    h("button", {
      type: "button",
      text: "Block",
      dataset: { testid: "request-block" },
      onclick: () => blockRequest(current()),
    }),
    h("button", {
      type: "button",
      class: "danger",
      text: "Delete",
      dataset: { testid: "request-delete" },
      onclick: () => deleteRequest(current()),
    }),
  );
}

function isMuted(conv) {
  if (!conv || !conv.muted_until) return false;
  return conv.muted_until === "forever" || Date.parse(conv.muted_until) > Date.now();
}

async function changeSettings(conv, settings) {
  await run(async () => {
    const res = await api.updateMySettings(conv.id, settings);
    upsertConversation(res.conversation);
    scheduleRender();
  });
}

/** The chat bar's Mute / Archive / Block buttons and the request banner. */
export function renderChatActions(conv) {
  const mute = $("mute-button");
  const archive = $("archive-button");
  const block = $("block-button");
  const banner = $("request-banner");
  if (!conv) {
    [mute, archive, block].forEach((b) => (b.hidden = true));
    banner.hidden = true;
    return;
  }
  const muted = isMuted(conv);
  mute.hidden = false;
  mute.textContent = muted ? "Unmute" : "Mute";
  mute.setAttribute("aria-pressed", String(muted));
  archive.hidden = false;
  archive.textContent = conv.archived ? "Unarchive" : "Archive";
  archive.setAttribute("aria-pressed", String(Boolean(conv.archived)));
  const peer = peerId(conv);
  block.hidden = peer === null;
  if (peer !== null) {
    const blocked = state.blocked.has(peer);
    block.textContent = blocked ? "Unblock" : "Block";
    block.dataset.blocked = String(blocked);
  }
  banner.hidden = !conv.request;
}

function openChatConv() {
  return state.chat ? state.conversations.get(state.chat.id) : null;
}

// ---- people search ----------------------------------------------------------------

function renderResults(users) {
  const list = $("people-results");
  list.replaceChildren(
    ...users.map((user) =>
      h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: "person",
            dataset: { testid: "person-result", userId: String(user.id) },
            onclick: () => openWith(user),
          },
          h("span", { class: "person-name", text: user.display_name || user.handle }),
          h("span", { class: "person-handle", text: `@${user.handle}` }),
        ),
      ),
    ),
  );
  list.hidden = users.length === 0;
}

async function openWith(user) {
  const errorEl = $("new-direct-error");
  clearError(errorEl);
  if (user.id === state.me.id) {
    showError(errorEl, "That is you.");
    return;
  }
  try {
    cacheUser(user);
    const res = await api.createDirect(user.id);
    upsertConversation(res.conversation);
    $("new-direct-handle").value = "";
    renderResults([]);
    scheduleRender();
    loadPresence();
    navigateToChat(res.conversation.id);
  } catch (err) {
    showError(errorEl, err);
  }
}

function searchTyped() {
  clearTimeout(searchTimer);
  const q = $("new-direct-handle").value.trim().replace(/^@/, "");
  const generation = ++searchGeneration;
  if (!q) {
    renderResults([]);
    return;
  }
  searchTimer = setTimeout(async () => {
    try {
      const res = await api.searchUsers(q.slice(0, 32), SEARCH_RESULTS);
      if (generation !== searchGeneration) return;
      renderResults((res.users || []).filter((u) => u.id !== state.me.id));
    } catch {
      if (generation === searchGeneration) renderResults([]);
    }
  }, SEARCH_DEBOUNCE_MS);
}

export function bindSafety() {
  $("new-direct-handle").addEventListener("input", searchTyped);
  $("mute-button").addEventListener("click", () => {
    const conv = openChatConv();
    if (conv) changeSettings(conv, { muted_until: isMuted(conv) ? null : "forever" });
  });
  $("archive-button").addEventListener("click", () => {
    const conv = openChatConv();
    if (conv) changeSettings(conv, { archived: !conv.archived });
  });
  $("block-button").addEventListener("click", () => {
    const conv = openChatConv();
    const peer = peerId(conv);
    if (peer !== null) setBlocked(peer, !state.blocked.has(peer));
  });
  $("request-accept-button").addEventListener("click", () => {
    const conv = openChatConv();
    if (conv) accept(conv);
  });
  $("request-block-button").addEventListener("click", () => {
    const conv = openChatConv();
    if (conv) blockRequest(conv);
  });
}

/** A member_settings event: this user's settings changed (maybe on another device). */
export function onMemberSettings(event) {
  const conv = state.conversations.get(event.conversation_id);
  if (!conv) return;
  conv.muted_until = event.muted_until;
  conv.archived = event.archived;
  scheduleRender();
}
