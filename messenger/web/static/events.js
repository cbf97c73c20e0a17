// Events (from this tab's poll, or forwarded by the leader tab) applied to the state.

import { fillGap, highestSeq, isNearBottom, scrollToBottom } from "./chat.js";
import {
  conversationTitle,
  noteMessageInList,
  refreshConversation,
  removeConversation,
} from "./conversations.js";
import { announce } from "./dom.js";
import { addMessages, refreshTicks, updateMessage } from "./messages.js";
import { persistOutbox } from "./outbox.js";
import { maybeMarkRead } from "./receipts.js";
import { onMemberSettings } from "./safety.js";
import { scheduleRender } from "./render.js";
import { state } from "./state.js";
import { clearTyping, onTyping } from "./typing.js";
import { userName } from "./users.js";

export function applyEvents(events) {
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
    case "message_updated":
      onMessageChanged(event.message);
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
    case "member_settings":
      onMemberSettings(event);
      break;
    case "presence":
      state.presence.set(event.user_id, { status: event.status, last_seen: event.last_seen });
      scheduleRender();
      break;
    default:
      break; // the contract only grows: ignore what this client does not know
  }
}

export function onMessage(message, { announceIt }) {
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
  const listed = state.conversations.get(conversationId);
  if (listed) {
    // Writing accepts a request; another member writing un-archives (API.md).
    if (message.sender_id === state.me.id) listed.request = false;
    else listed.archived = false;
  }
  const known = state.conversations.has(conversationId);
  const isNew = known ? noteMessageInList(message) : false;
  if (!known) {
    // A chat someone just started with us. A load of it may already be under way
    // (its first event came before this one) and answer from before this message:
    // note the message once the conversation is known (counted once either way).
    refreshConversation(conversationId).then((conv) => {
      if (conv) noteMessageInList(message);
    });
  }

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

/** An edit, a deletion or a reaction: the message as it is now, wherever it shows. */
export function onMessageChanged(message) {
  if (!message || typeof message.seq !== "number") return;
  const conv = state.conversations.get(message.conversation_id);
  if (conv && conv.last_message && conv.last_message.seq === message.seq) {
    conv.last_message = message;
    scheduleRender();
  }
  updateMessage(message);
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

export function onMemberRemoved(event) {
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

export function onConversationUpdated(snapshot) {
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
