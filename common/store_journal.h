/*
 * store_journal.h - each task's journey, kept in the store.
 *
 * Each side writes a short journal per task into its own store: what
 * happened, when, with the message seq, the API call and its outcome, the
 * dead-letter reason. `remotetaskctl --command trace` reads it back as a
 * time-ordered table (ctl/ctl_trace.c). A row is (time in ms since the
 * epoch, side, client id, source task, target task when known, event,
 * seq, detail).
 *
 * Durability. The journal never costs a task its durability, nor a commit
 * of its own: store_journal_add() only queues a row in memory. The queue
 * is written inside a transaction the components commit anyway
 * (store_commit(): the relay's confirm, the appliers' link or rev commit)
 * once STORE_JOURNAL_BATCH_ROWS rows wait or the oldest has waited
 * STORE_JOURNAL_BATCH_MS, so that many rows share the pages one commit
 * writes; when nothing commits for STORE_JOURNAL_FLUSH_MS,
 * store_journal_tick() writes it in a transaction that is not synced on
 * its own (synchronous=NORMAL; the next synced commit carries it to
 * disk). A row added inside a transaction belongs to it: a rollback, or a
 * COMMIT that failed, drops it with the work it describes (the caller
 * redoes both).
 * So a crash or a power loss may lose the last rows of the journal, never
 * a task; a clean stop (store_free) writes what is queued. A queue that
 * reaches STORE_JOURNAL_QUEUE_MAX rows (the store failing for a long
 * time) drops new rows and counts them.
 *
 * Bounds. journal.entries rows per task (the newest; 0 turns the journal
 * off and empties it) and journal.days of age. store_journal_tick() prunes
 * in small batches, at most STORE_JOURNAL_PRUNE_BATCH rows per
 * STORE_JOURNAL_PRUNE_MS, so a write lock is never held long: rows past
 * their age go from the oldest; rows past a task's count go as a cursor
 * walks the tasks (STORE_JOURNAL_PRUNE_TASKS per batch; once a whole walk
 * found nothing to delete, the next batch waits
 * STORE_JOURNAL_PRUNE_IDLE_MS), so a task may hold more than entries rows
 * until the walk reaches it; a trace shows its newest entries only.
 *
 * Details are cut to STORE_JOURNAL_DETAIL_MAX bytes (on a UTF-8 boundary,
 * marked "...") and sanitised: control characters become spaces, bytes
 * that are not UTF-8 become '?'. Callers never put a secret in one: what
 * they pass is what their log lines already show.
 *
 * One thread per handle, as the store (store.h).
 */
#ifndef RT_STORE_JOURNAL_H
#define RT_STORE_JOURNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rt.h"
#include "store.h"

/* Which side wrote a row: the client (source tasks, the relay and the
 * reverse applier) or the server (the forward applier and the state
 * publisher, rows keyed by the client's task). */
enum store_side {
    STORE_SIDE_CLIENT = 1,
    STORE_SIDE_SERVER = 2,
};

/* An event name is at most this long (the names below are the interface
 * `trace` shows; tests read them). */
#define STORE_JOURNAL_EVENT_MAX 24
/* A detail is cut to this many bytes. */
#define STORE_JOURNAL_DETAIL_MAX 240
/* Rows waiting in memory for a transaction, at most. */
#define STORE_JOURNAL_QUEUE_MAX 4096
/* A commit carries the queue once this many rows wait, or once the oldest
 * waited this long. Writing the journal's pages costs a commit about as
 * much as a few dozen rows (measured: a commit that carries one row took
 * 25 us more than one without, a row in a batch 2 us), so rows go in
 * batches rather than one or two per commit. */
#define STORE_JOURNAL_BATCH_ROWS 64
#define STORE_JOURNAL_BATCH_MS   250
/* Rows queued and not committed are written after this long. */
#define STORE_JOURNAL_FLUSH_MS 1000
/* Pruning: one batch per this long, of at most this many rows deleted and
 * this many tasks' counts checked. */
#define STORE_JOURNAL_PRUNE_MS    1000
#define STORE_JOURNAL_PRUNE_BATCH 500
#define STORE_JOURNAL_PRUNE_TASKS 64
/* After a walk over every task that deleted nothing, the next batch waits
 * this long. */
#define STORE_JOURNAL_PRUNE_IDLE_MS 60000
/* The defaults of journal.entries and journal.days (config/config_table.c) and their
 * upper bounds. */
#define STORE_JOURNAL_ENTRIES_DEFAULT 100
#define STORE_JOURNAL_ENTRIES_MAX     10000
#define STORE_JOURNAL_DAYS_DEFAULT    30
#define STORE_JOURNAL_DAYS_MAX        3650

/* The events. Client side: */
#define JOURNAL_RECORDED   "recorded"   /* outbox events taken: "N events since T" */
#define JOURNAL_RECONCILED "reconciled" /* reconciliation found `updated` moved */
#define JOURNAL_VIEWED     "viewed"     /* the view of the task and its outcome */
#define JOURNAL_UNCHANGED  "unchanged"  /* forward fields as confirmed: nothing published */
#define JOURNAL_PUBLISHED  "published"  /* a task message, seq S, handed to the broker */
#define JOURNAL_CONFIRMED  "confirmed"  /* the broker confirmed seq S (and it is committed) */
#define JOURNAL_DEFERRED   "deferred"   /* the event waits: nack, unroutable, API error */
#define JOURNAL_STATE      "state"      /* a state message, seq S, received */
#define JOURNAL_WRITTEN    "written"    /* what a state changed on the source task */
/* Server side: */
#define JOURNAL_RECEIVED "received" /* a task message, seq S, received */
#define JOURNAL_APPLIED  "applied"  /* applied as target task T: created, adopted, changed... */
#define JOURNAL_STATEPUB "state-published" /* a state, seq S, handed to the broker */
/* Both sides (the delivery slots of consumer/applier.c): */
#define JOURNAL_DROPPED  "dropped"       /* duplicate, superseded or stale */
#define JOURNAL_RETRIED  "retried"       /* sent to a retry delay queue, with the reason */
#define JOURNAL_HELD     "held"          /* a store step failed for now: it waits */
#define JOURNAL_DEAD     "dead-lettered" /* sent to the dead-letter queue, with the reason */
#define JOURNAL_REPLAYED "replayed"      /* a delivery replayed from the dead-letter queue */

/* One row as read back. */
struct store_journal_row {
    int64_t id; /* the order rows were written in */
    int64_t ts_ms;
    enum store_side side;
    char client[STORE_CLIENT_MAX + 1];
    int64_t src_task;
    int64_t dst_task; /* 0 = not known */
    char event[STORE_JOURNAL_EVENT_MAX + 1];
    uint64_t seq; /* 0 = none */
    char detail[STORE_JOURNAL_DETAIL_MAX + 1];
};

/* Counters of this handle since the journal was configured. */
struct store_journal_stats {
    uint64_t queued;  /* rows waiting in memory now */
    uint64_t written; /* rows inserted and committed */
    uint64_t dropped; /* rows lost: the queue was full or memory ran out, the client id
                         was refused, or the last write at store_free() failed (rows
                         of a rolled back transaction are not counted: they describe
                         work that did not happen) */
    uint64_t pruned;  /* rows deleted by pruning */
};

/* "client" or "server" ("?" for anything else). */
const char *store_side_name(enum store_side side);

/* Turns the journal of this handle on with its bounds: entries rows per
 * task (0..STORE_JOURNAL_ENTRIES_MAX; 0 = off: rows are no longer added
 * and pruning removes those there are) and days of age
 * (1..STORE_JOURNAL_DAYS_MAX). May be called again (a reload) to change
 * them; queued rows stay. RT_REJECT for a bound out of range or a handle
 * opened read-only; RT_RETRY when memory ran out. Until it is called,
 * store_journal_add() does nothing and store_journal_tick() neither
 * flushes nor prunes. */
rt_status store_journal_configure(struct store *st, int entries, int days);

/* Queues one row: at ts_ms (0 = now, the wall clock), by side, for the
 * client's source task src_task (and its target dst_task, 0 when not
 * known), event (one of the names above; cut to STORE_JOURNAL_EVENT_MAX),
 * seq (0 = none), and a detail formatted from fmt (NULL = ""), cut and
 * sanitised as said above. Never fails the caller: when the journal is
 * off or not configured it does nothing; when the row cannot be kept it
 * is counted as dropped. See the header for when the row reaches disk. */
void store_journal_add(struct store *st, int64_t ts_ms, enum store_side side, const char *client,
                       int64_t src_task, int64_t dst_task, const char *event, uint64_t seq,
                       const char *fmt, ...) __attribute__((format(printf, 9, 10)));

/* The same with a va_list, for a component's own journal helper. */
void store_journal_vadd(struct store *st, int64_t ts_ms, enum store_side side, const char *client,
                        int64_t src_task, int64_t dst_task, const char *event, uint64_t seq,
                        const char *fmt, va_list ap) __attribute__((format(printf, 9, 0)));

/* The background work, for the daemon's loop: writes the queue when its
 * oldest row waited STORE_JOURNAL_FLUSH_MS and nothing committed it, and
 * prunes one batch every STORE_JOURNAL_PRUNE_MS, in one short unsynced
 * transaction. now_ms is any monotonic clock in ms (it only schedules).
 * Does nothing inside an open transaction. Returns when it wants to run
 * again, on now_ms's clock. Failures are kept for store_strerror() and
 * tried again at the next due time; the queue keeps its rows. */
int64_t store_journal_tick(struct store *st, int64_t now_ms);

/* Writes the queued rows now in a transaction of its own (not synced;
 * see above). RT_REJECT inside an open transaction (store_commit() writes
 * them then). */
rt_status store_journal_flush(struct store *st);

/* One pruning batch now, at wall-clock time now_ms: rows older than the
 * configured days, then tasks over their count, at most
 * STORE_JOURNAL_PRUNE_BATCH rows in all, in one transaction (not synced).
 * *deleted (may be NULL) receives how many rows went. */
rt_status store_journal_prune(struct store *st, int64_t now_ms, uint64_t *deleted);

/* Reads the newest max rows of (side, client, src_task) into out[0..*n),
 * in time order (ts_ms, then the order written). Works on any handle,
 * store_open_readonly()'s included, journal configured or not. *n is 0
 * when the task has no rows. */
rt_status store_journal_read(struct store *st, enum store_side side, const char *client,
                             int64_t src_task, size_t max, struct store_journal_row *out,
                             size_t *n);

/* Finds the source task of target task dst_task in the server side's
 * rows (for a task whose link is gone): the newest row naming it, of
 * client when client is not NULL. *found tells whether there is one;
 * client_out (STORE_CLIENT_MAX + 1 bytes) and *src_task receive it.
 * Scans the journal: for the command line, not the daemon. */
rt_status store_journal_find_target(struct store *st, const char *client, int64_t dst_task,
                                    char *client_out, int64_t *src_task, bool *found);

/* Copies the counters of this handle into *out (zero when never
 * configured). */
void store_journal_stats(const struct store *st, struct store_journal_stats *out);

#endif
