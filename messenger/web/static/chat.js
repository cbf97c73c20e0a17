// The open chat: opening and closing it, its title bar, history pages and scrolling.

import { renderComposerMode } from "./actions.js";
import * as api from "./api.js";
import { clearUploads } from "./attachments.js";
import {
  conversationTitle,
  noteMessageInList,
  peerId,
  refreshConversation,
  removeConversation,
} from "./conversations.js";
import { $, clearError, isWide, showError } from "./dom.js";
import { renderMembersPanel } from "./members.js";
import { addMessages, renderPendingForChat } from "./messages.js";
import { presenceDot } from "./presence.js";
import { maybeMarkRead } from "./receipts.js";
import { scheduleRender } from "./render.js";
import { setView } from "./router.js";
import { renderChatActions } from "./safety.js";
import { closeSettings } from "./settings.js";
import { state } from "./state.js";
import { renderTyping } from "./typing.js";

export const HISTORY_PAGE_SIZE = 50;

// Scrolling within this many pixels of the top loads the previous page of history.
const LOAD_OLDER_THRESHOLD_PX = 120;

// A chat scrolled within this many pixels of the bottom follows new messages.
const STICK_TO_BOTTOM_PX = 80;

export function closeChat() {
  state.chatGeneration += 1;
  state.chat = null;
  $("chat").hidden = true;
  $("chat-placeholder").hidden = false;
  $("message-list").replaceChildren();
  setView("list");
  scheduleRender();
}

export async function openChat(conversationId) {
  closeSettings();
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
  state.composing = null;
  renderComposerMode();
  clearUploads();
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

export function renderChatChrome() {
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
  renderChatActions(conv);
}

export function updateHistoryEdge() {
  const chat = state.chat;
  if (!chat || !chat.loaded) return;
  $("load-older-button").hidden = chat.nextBefore === null;
  $("history-start").hidden = chat.nextBefore !== null;
}

export function isNearBottom() {
  const scroller = $("message-scroller");
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < STICK_TO_BOTTOM_PX;
}

export function scrollToBottom() {
  const scroller = $("message-scroller");
  scroller.scrollTop = scroller.scrollHeight;
}

export function highestSeq(chat) {
  let max = 0;
  for (const seq of chat.messages.keys()) if (seq > max) max = seq;
  return max;
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

/** Load older pages until `seq` is shown (a reply's quote was clicked); bounded. */
export async function loadOlderUntil(seq) {
  for (let page = 0; page < 100; page += 1) {
    const chat = state.chat;
    if (!chat || chat.elements.has(seq) || chat.nextBefore === null) return;
    if (chat.loadingOlder) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      continue;
    }
    await loadOlder();
  }
}

/** Fetch messages newer than the newest shown, page by page (after a gap or resync). */
export async function fillGap() {
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

export function bindChat() {
  const scroller = $("message-scroller");
  scroller.addEventListener("scroll", () => {
    if (scroller.scrollTop < LOAD_OLDER_THRESHOLD_PX) loadOlder();
    if (isNearBottom()) maybeMarkRead();
  });
  $("load-older-button").addEventListener("click", loadOlder);
}
