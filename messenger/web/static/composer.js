// The composer: Enter sends, Shift+Enter adds a line; typing tells the others.

import { renderComposerMode, saveEdit } from "./actions.js";
import { clearUploads, readyAttachmentIds } from "./attachments.js";
import { randomId } from "./session.js";
import { scrollToBottom } from "./chat.js";
import { $, clearError, codePoints, showError } from "./dom.js";
import { renderPending } from "./messages.js";
import { persistOutbox, pumpQueue } from "./outbox.js";
import { state } from "./state.js";
import { composerInput } from "./typing.js";

const MAX_BODY_CHARS = 4000; // API.md limit, counted in code points

function sendComposer() {
  const chat = state.chat;
  const input = $("message-input");
  let body = input.value;
  if (!chat) return;
  if (state.composing && state.composing.mode === "edit") {
    saveEdit(body);
    return;
  }
  const attachmentIds = readyAttachmentIds();
  if (attachmentIds === null) {
    showError($("chat-error"), "Wait for the uploads to finish, or remove those that failed.");
    return;
  }
  if (!body.trim()) {
    if (!attachmentIds.length) return;
    body = ""; // a message of attachments alone (API.md)
  }
  if (codePoints(body) > MAX_BODY_CHARS) {
    showError($("chat-error"), `A message can have at most ${MAX_BODY_CHARS} characters.`);
    return;
  }
  clearError($("chat-error"));
  const item = {
    conversation_id: chat.id,
    client_msg_id: `w-${randomId(16)}`, // [A-Za-z0-9_-]{1,64} per API.md
    body,
    reply_to: state.composing && state.composing.mode === "reply" ? state.composing.seq : null,
    attachment_ids: attachmentIds,
    created_at: new Date().toISOString(),
    status: "pending",
    error: null,
    permanent: false,
  };
  state.outbox.set(item.client_msg_id, item);
  persistOutbox();
  input.value = "";
  state.composing = null;
  renderComposerMode();
  clearUploads();
  state.lastTypingSentAt = 0;
  renderPending(item);
  scrollToBottom();
  pumpQueue(chat.id);
}

export function bindComposer() {
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
}
