// The one state object of this tab: what it knows of the session, the conversations,
// the open chat and the unsent messages. Every module reads and updates it in place.

export const state = {
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
  composing: null, // {mode: "reply"|"edit", seq} while the composer replies or edits
  uploads: [], // files being attached to the next message, see attachments.js
  presenceTimer: null,
  blocked: new Set(), // user ids this user blocked
  archivedView: false, // the list shows archived conversations instead
};
