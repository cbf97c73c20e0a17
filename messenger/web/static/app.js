/*
 * Messenger browser client, written against shared/API.md only.
 * Plain ES modules, no build step, no inline script or style (CSP default-src 'self').
 *
 * The entry point: index.html names only this file, the browser loads the others through
 * the imports. Each module has one job:
 *
 *   Talking to the server, and to the other tabs
 *     api.js            HTTP calls of the v1 API, the error shape
 *     session.js        the token in sessionStorage, shared with tabs opened later
 *     tabs.js           leader election: one long poll per session for all its tabs
 *     poller.js         the /v1/events loop with backoff and resync
 *     sync.js           this tab's part: poll when leading, forward or apply events, resync
 *   What the tab knows
 *     state.js          the one state object
 *     users.js          who is who, names, lookup by handle
 *     presence.js       online/offline and its dots
 *     conversations.js  the conversations and their titles
 *     events.js         an event (polled or forwarded) applied to the state
 *     receipts.js       read and delivered positions
 *     typing.js         who is typing
 *     outbox.js         unsent messages: queue, retry with the same client_msg_id
 *   What the page shows
 *     dom.js            DOM helpers, time formatting
 *     render.js         one coalesced render after any number of changes
 *     login.js          the login / register screen
 *     lifecycle.js      a session starts and ends in this tab
 *     router.js         #/c/<id> and which pane shows on narrow screens
 *     list.js           the conversation list
 *     newchat.js        the forms to start a direct chat or a group
 *     chat.js           the open chat: title bar, history, scrolling
 *     messages.js       its message list and ticks
 *     members.js        its members panel
 *     composer.js       the message box
 *     safety.js         requests (Accept / Block / Delete), block, mute, archive, people search
 *     settings.js       the settings page: profile, password, sessions, blocked users
 *     actions.js        a message's menu: reply, edit, delete, react
 *     attachments.js    attaching files (progress bars), showing a message's files
 *
 * The feature modules call one another (a message event touches the list, the open
 * chat and the outbox), so their imports form cycles. ES modules allow that as long as
 * no module runs code when it is loaded: they only declare. This file is the one that
 * acts, after every module is loaded.
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
 *     data-deleted, data-edited ("true"|"false") on confirmed messages;
 *     reply-quote (data-reply-to: click jumps there, the message gets
 *     data-highlighted="true" for a moment), message-deleted ("Message deleted"),
 *     message-edited ("edited"), message-attachments, attachment-image (an <img>,
 *     inside a button that opens the lightbox), attachment-file (a download chip),
 *     message-reactions, reaction-chip (data-emoji, data-count, aria-pressed: click
 *     toggles one's own), message-menu-button (aria-expanded) opening message-menu:
 *     reaction-option (data-emoji), menu-reply, menu-edit, menu-delete (click twice)
 *   composer-reply / composer-edit   the banner above the box (data-mode), with
 *                             composer-mode-cancel (Esc cancels too)
 *   attach-button, file-input, upload-tray, upload-item (data-state =
 *     "uploading"|"done"|"failed"), upload-progress (a <progress>), upload-remove
 *   lightbox, lightbox-image, lightbox-close   an image at full size
 *   typing-indicator          "Bob is typing…" (empty when nobody types)
 *   chat-error
 *   message-input, send-button   Enter sends, Shift+Enter inserts a newline
 *   live-region               aria-live announcements (new messages)
 *   people-results, person-result (data-user-id)   people search under new-direct-handle
 *   requests-section, requests-count, request-list   message requests, each a
 *                             conversation-item with request-accept, request-block,
 *                             request-delete (Delete: leave a group, archive a direct chat)
 *   archived-toggle           the list shows archived conversations (aria-pressed)
 *   mute-button, archive-button, block-button (data-blocked)   in the chat bar
 *   request-banner, request-accept-button, request-block-button   in a request's chat
 *   settings-button, settings-view, settings-close, profile-display-name, profile-save,
 *   profile-message, password-current, password-new, password-save, password-message,
 *   session-list, session-item (data-session-id, data-current), session-revoke,
 *   sessions-revoke-others, sessions-error, blocked-list, blocked-item, unblock-button
 */

import { bindActions, onMessageUpdated } from "./actions.js";
import { bindAttachments } from "./attachments.js";
import { bindChat } from "./chat.js";
import { bindComposer } from "./composer.js";
import { bindLifecycle, resumeSession } from "./lifecycle.js";
import { bindList } from "./list.js";
import { bindLogin } from "./login.js";
import { bindMembers } from "./members.js";
import { onMessageChanged } from "./events.js";
import { bindNewChat } from "./newchat.js";
import { bindReceipts } from "./receipts.js";
import { bindRouter } from "./router.js";
import { bindSafety } from "./safety.js";
import { bindSettings } from "./settings.js";
import { bindSync } from "./sync.js";

function boot() {
  bindLogin();
  bindLifecycle();
  bindNewChat();
  bindList();
  bindRouter();
  bindMembers();
  bindSafety();
  bindSettings();
  bindChat();
  bindComposer();
  bindActions();
  bindAttachments();
  onMessageUpdated(onMessageChanged);
  bindReceipts();
  bindSync();
  resumeSession();
}

boot();
