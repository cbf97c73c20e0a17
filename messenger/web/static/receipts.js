// Receipts: read when the chat is really in front of the user, delivered from the
// tab that polls.

import * as api from "./api.js";
import { highestSeq } from "./chat.js";
import { myMember } from "./conversations.js";
import { $, isWide, wideQuery } from "./dom.js";
import { scheduleRender } from "./render.js";
import { state } from "./state.js";

export function isChatActive(conversationId) {
  return Boolean(
    state.chat &&
    state.chat.id === conversationId &&
    state.chat.loaded &&
    document.visibilityState === "visible" &&
    document.hasFocus() &&
    (isWide() || $("app-view").dataset.view === "chat"),
  );
}

export function maybeMarkRead() {
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

export function postDelivered(conversationId, seq) {
  // No automatic "delivered" for a message request (or a conversation not known
  // yet, which is one): its sender would learn when this device is online, the
  // very thing a request keeps from strangers. Reading it is an answer, though.
  const conv = state.conversations.get(conversationId);
  if (!conv || conv.request) return;
  if (seq <= (state.deliveredPosted.get(conversationId) || 0)) return;
  state.deliveredPosted.set(conversationId, seq);
  api.postReceipt(conversationId, "delivered", seq).catch(() => {
    // Forget it so that the next message or resync sends it again.
    if (state.deliveredPosted.get(conversationId) === seq) {
      state.deliveredPosted.delete(conversationId);
    }
  });
}

export function bindReceipts() {
  // Reading happens when the chat is visible and focused.
  document.addEventListener("visibilitychange", maybeMarkRead);
  window.addEventListener("focus", maybeMarkRead);
  wideQuery.addEventListener("change", maybeMarkRead);
}
