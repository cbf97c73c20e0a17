// Conversations: the list's data (pages, upserts, refreshes, removal) and titles.

import * as api from "./api.js";
import { closeChat } from "./chat.js";
import { $, announce, clearError, showError } from "./dom.js";
import { refreshTicks } from "./messages.js";
import { persistOutbox } from "./outbox.js";
import { loadPresence } from "./presence.js";
import { isChatActive, postDelivered } from "./receipts.js";
import { scheduleRender } from "./render.js";
import { state } from "./state.js";
import { isLeaderTab } from "./sync.js";
import { userName } from "./users.js";

const LIST_PAGE_SIZE = 50;

export function peerId(conv) {
  if (!conv || conv.kind !== "direct") return null;
  if (!Array.isArray(conv.members)) {
    refreshConversation(conv.id);
    return null;
  }
  const other = conv.members.find((m) => m.user_id !== state.me.id);
  return other ? other.user_id : null;
}

export function conversationTitle(conv) {
  if (!conv) return "";
  if (conv.kind === "group") return conv.title || "Untitled group";
  if (conv.title) return conv.title;
  const peer = peerId(conv);
  if (peer !== null) return userName(peer);
  if (Array.isArray(conv.members)) return state.me.display_name || `@${state.me.handle}`;
  return "…";
}

export function upsertConversation(conv) {
  const existing = state.conversations.get(conv.id);
  if (existing) {
    const members = conv.members === undefined ? existing.members : conv.members;
    Object.assign(existing, conv, { members });
    return existing;
  }
  state.conversations.set(conv.id, conv);
  return conv;
}

export function myMember(conv) {
  return Array.isArray(conv.members)
    ? conv.members.find((m) => m.user_id === state.me.id)
    : undefined;
}

/** GET /v1/conversations/{id} (deduplicated); updates state, or drops it on 404. */
export function refreshConversation(conversationId) {
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

export function removeConversation(conversationId, notice) {
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

export function sortedConversations() {
  return [...state.conversations.values()].sort(
    (a, b) => activityTime(b) - activityTime(a) || b.id - a.id,
  );
}

export async function loadConversations({ reset }) {
  const generation = reset ? ++state.listGeneration : state.listGeneration;
  try {
    const res = await api.listConversations(
      reset ? undefined : state.listNext,
      LIST_PAGE_SIZE,
      state.archivedView,
    );
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
    if (isLeaderTab()) {
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

/** Update the list entry for a message; true when it is newer than what we had. */
export function noteMessageInList(message) {
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
