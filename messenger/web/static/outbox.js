// Sending: optimistic display, per-conversation queue, retry with the SAME client_msg_id.
// Unsent messages are kept in this tab's storage per user, so a reload sends them.

import * as api from "./api.js";
import { backoffDelayMs } from "./poller.js";
import { loadJson, saveJson } from "./session.js";
import { $ } from "./dom.js";
import { onMessage } from "./events.js";
import { renderPending } from "./messages.js";
import { maybeMarkRead } from "./receipts.js";
import { state } from "./state.js";

export function outboxKey() {
  return `messenger.outbox.${state.me.id}`;
}

export function persistOutbox() {
  if (!state.me) return;
  const items = [...state.outbox.values()].map(
    ({ conversation_id, client_msg_id, body, reply_to, attachment_ids, created_at }) => ({
      conversation_id,
      client_msg_id,
      body,
      reply_to: reply_to || null,
      attachment_ids: attachment_ids || [],
      created_at,
    }),
  );
  saveJson(outboxKey(), items);
}

export function restoreOutbox() {
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
export async function pumpQueue(conversationId) {
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
        const res = await api.sendMessage(conversationId, item.client_msg_id, item.body, {
          replyTo: item.reply_to,
          attachmentIds: item.attachment_ids,
        });
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

export function retryNow(item) {
  if (!state.outbox.has(item.client_msg_id)) return;
  item.permanent = false;
  item.error = null;
  item.status = "pending";
  const queue = sendQueue(item.conversation_id);
  queue.failures = 0;
  renderPending(item);
  pumpQueue(item.conversation_id);
}

export function retryAllQueues() {
  for (const conversationId of new Set([...state.outbox.values()].map((i) => i.conversation_id))) {
    const queue = sendQueue(conversationId);
    if (queue.timer) pumpQueue(conversationId);
  }
}

export function discardUnsent(item) {
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
