/*
 * rt.h - the verdict every call that talks to the outside world returns.
 *
 * OK     the call did what was asked.
 * RETRY  a transient failure (network, timeout, HTTP 5xx, broker gone):
 *        the same call may succeed later; nothing was applied for certain.
 * REJECT a permanent failure (bad input, refused by the peer): retrying
 *        the same call can never succeed; the caller dead-letters or reports.
 *
 * Each module that returns these keeps a human-readable reason in its own
 * object and exposes it through a `<module>_strerror()` function.
 */
#ifndef RT_H
#define RT_H

typedef enum rt_status {
    RT_OK = 0,
    RT_RETRY = 1,
    RT_REJECT = 2,
} rt_status;

/* "ok", "retry" or "reject"; a static string. */
static inline const char *rt_status_name(rt_status s)
{
    switch (s) {
    case RT_OK: return "ok";
    case RT_RETRY: return "retry";
    case RT_REJECT: return "reject";
    }
    return "unknown";
}

#endif
