// Users: the cache of who is who, names for display, lookup by handle.

import * as api from "./api.js";
import { scheduleRender } from "./render.js";
import { state } from "./state.js";

export function cacheUser(user) {
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

export function userName(userId) {
  if (state.me && userId === state.me.id) return "You";
  const user = state.users.get(userId);
  if (user) return user.display_name || `@${user.handle}`;
  fetchUser(userId);
  return "…";
}

export function cleanHandle(text) {
  return text.trim().replace(/^@/, "").toLowerCase();
}

export async function findUser(handle) {
  try {
    return (await api.findUserByHandle(handle)).user;
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 404) {
      throw new Error(`No user with the handle “${handle}”.`);
    }
    throw err;
  }
}
