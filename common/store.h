/*
 * store.h - the durable state: outbox, sequence numbers, links (SQLite).
 *
 * One database file, <state_dir>/remotetask.db, in WAL mode. The daemon and
 * the CLI (`remotetaskctl --command taskevent`) open it at the same time, so
 * every handle sets a busy timeout, starts its write transactions with
 * BEGIN IMMEDIATE and commits with synchronous=FULL: an event that
 * store_outbox_add() reported as recorded survives a crash or a power loss.
 * The daemon groups its commits instead, one sync per loop pass, and holds
 * back whatever must follow a durable commit until that sync (see "group
 * commits" below).
 * The CLI waits up to STORE_BUSY_TIMEOUT_MS for a lock another process
 * holds; the daemon, whose one loop must not stop that long, opens its
 * handle with STORE_BUSY_DAEMON_MS and tries again at its own level.
 *
 * The schema is versioned in PRAGMA user_version and migrated in one
 * transaction when the store is opened; a database written by a newer
 * version of remotetask is refused rather than misread.
 *
 * Tables and their meaning:
 *   outbox  client side: task events not yet published, one row per
 *           (client, task); new events for a row coalesce into it.
 *   fwd     client side: per source task, the last sequence number used and
 *           the fingerprint of the forward fields the broker last confirmed.
 *   links   server side: source task -> target task, the last forward seq
 *           applied, the last reverse seq used and what it published.
 *   rev     client side: per source task, the last reverse seq applied.
 *   meta    small named values (last sync, last apply...).
 *   journal both sides: what happened to each task, bounded per task and
 *           in age (store_journal.h).
 *   retry   both sides: the retry copies an applier handed to the broker's
 *           delay queues and has not seen come back yet (store_retry.c).
 *
 * Every call that reads or writes returns RT_OK, RT_RETRY (the database is
 * busy, locked, out of space or had an I/O error: the same call may work
 * later) or RT_REJECT (misuse: a client id too long, a nested transaction;
 * or a corrupt database). The reason is kept for store_strerror(); a full
 * disk reads "no space left on the device holding <path>", a lock held past
 * the busy timeout "<path> is locked by another process", an I/O error
 * "I/O error on <path>: <the system's reason>".
 *
 * A struct store belongs to one thread, and to the process that opened it:
 * a child process after fork() opens its own.
 *
 * Numbers: task ids and times (milliseconds since the epoch) are int64_t,
 * as the codec has them; sequence numbers, generations and counts are
 * uint64_t and must stay below 2^63 (SQLite's integers are signed).
 */
#ifndef RT_STORE_H
#define RT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rt.h"

/* A client id is at most this many bytes; longer ones are refused. */
#define STORE_CLIENT_MAX 64
/* A fingerprint (of forward fields or of a published state) is at most this
 * many bytes, e.g. a hex SHA-256 is 64. */
#define STORE_FP_MAX 128
/* An outbox error text is cut to this many bytes before it is stored. */
#define STORE_ERROR_MAX 512
/* A meta key and a meta value are at most this many bytes. */
#define STORE_META_KEY_MAX   64
#define STORE_META_VALUE_MAX 4096
/* The schema version this code writes; store_open() migrates up to it. */
#define STORE_SCHEMA_VERSION 5
/* A task's `updated` value (YYYY-MM-DD HH:MM:SS) is at most this long. */
#define STORE_UPDATED_MAX 32
/* An fp set (common/fp.h) of what was applied is at most this long. */
#define STORE_APPLIED_MAX 512
/* The database file name inside state_dir. */
#define STORE_FILE_NAME "remotetask.db"
/* How long a call waits for another process that holds the write lock:
 * the default of store_open() (the command line), and the daemon's
 * (store_open_timeout()). Writers hold the lock for one short
 * transaction, so reaching either means something is wrong, and the
 * caller gets RT_RETRY. */
#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_BUSY_DAEMON_MS  250

struct store;

/* One coalesced outbox row, as store_outbox_due() returns it. */
struct store_event {
    char client[STORE_CLIENT_MAX + 1];
    int64_t task;
    uint64_t gen;      /* bumped by every new event; pass to store_outbox_done() */
    uint64_t events;   /* how many events coalesced into this row */
    int64_t first_ms;  /* when the oldest of them was recorded */
    int64_t last_ms;   /* when the newest of them was recorded */
    uint64_t attempts; /* failed publishing attempts so far */
};

/* What was last sent forward for a source task (client side). */
struct store_fwd {
    bool found;                /* false: nothing was ever allocated for this task */
    uint64_t seq;              /* the last seq allocated; the next is seq + 1 */
    uint64_t fp_seq;           /* the seq of the confirmed message fp describes; 0 = none */
    char fp[STORE_FP_MAX + 1]; /* "" until a message was confirmed */
    int64_t sent_ms;           /* when that confirmation was recorded */
    char updated[STORE_UPDATED_MAX + 1]; /* the task's `updated` when last seen sent or
                                            unchanged; "" = never */
};

/* A link from a source task to the target task made for it (server side). */
struct store_link {
    bool found; /* set by the getters; ignored by store_link_put() */
    char client[STORE_CLIENT_MAX + 1];
    int64_t src_task;
    int64_t dst_task;
    uint64_t last_seq;             /* seq of the last forward message applied */
    uint64_t rev_seq;              /* last seq used for a reverse state message */
    char rev_fp[STORE_FP_MAX + 1]; /* fingerprint of the state last published */
    uint64_t notes_sent;           /* notes of the target task already published */
    int64_t updated_ms;
    char applied[STORE_APPLIED_MAX + 1]; /* fp set of what was last applied to the
                                            target task (common/fp.h) */
};

/* What was applied from reverse messages for a source task (client side). */
struct store_rev {
    bool found;
    uint64_t seq;                        /* the last state seq applied */
    uint64_t notes_applied;              /* notes of the target task already copied */
    char applied[STORE_APPLIED_MAX + 1]; /* fp set of what was last applied to the
                                            source task (common/fp.h) */
};

/* Opens <state_dir>/remotetask.db, creating the directory (mode 0750, with
 * any missing parents) and the file (mode 0640) when they are missing,
 * switching it to WAL and migrating its schema to STORE_SCHEMA_VERSION.
 * Returns a handle to free with store_free(), or NULL with the reason in
 * err (always NUL-terminated when errlen > 0): state_dir is not a
 * directory, cannot be created, the file is not a database, or was written
 * by a newer version. Waits up to the busy timeout for another process that
 * holds the database. Calls on the handle wait up to STORE_BUSY_TIMEOUT_MS
 * for a lock. */
struct store *store_open(const char *state_dir, char *err, size_t errlen);

/* As store_open(), but calls on the handle wait at most busy_ms (>= 0) for
 * a lock another process holds before they return RT_RETRY (the daemon:
 * STORE_BUSY_DAEMON_MS). Opening itself still waits up to
 * STORE_BUSY_TIMEOUT_MS. */
struct store *store_open_timeout(const char *state_dir, int busy_ms, char *err, size_t errlen);

/* Opens <state_dir>/remotetask.db for reading only (remotetaskctl's trace):
 * creates nothing, migrates nothing, and works while the daemon runs or
 * not. Returns a handle to free with store_free(), or NULL with the reason
 * in err: there is no store, the file is not a database, or its schema
 * version is not STORE_SCHEMA_VERSION (a newer remotetask wrote it, or
 * this version's daemon has not run on it yet). Every read of store.h
 * works on it; a write returns RT_REJECT. */
struct store *store_open_readonly(const char *state_dir, char *err, size_t errlen);

/* Closes the database and frees the handle; an open transaction is rolled
 * back first. Journal rows still queued (store_journal.h) are written in
 * a transaction of their own. Accepts NULL. */
void store_free(struct store *st);

/* The reason for the last failure on this handle, "" if none. The string
 * belongs to the handle and changes with the next failing call. */
const char *store_strerror(const struct store *st);

/* The same reason without the operation that met it ("no space left on
 * the device holding <path>", "<path> is locked by another process
 * (waited N ms)"): the same text for every call that meets the same
 * condition, for callers that log a condition once rather than once per
 * call. "" if none; as store_strerror() for its life. */
const char *store_strcause(const struct store *st);

/* ---- transactions ---------------------------------------------------- */

/* Starts a write transaction (BEGIN IMMEDIATE) so that the calls up to
 * store_commit() take effect together or not at all. RT_REJECT if one is
 * already open (transactions do not nest). */
rt_status store_begin(struct store *st);

/* Commits the transaction store_begin() opened. On failure the transaction
 * is rolled back, so the caller redoes the whole unit after a RETRY.
 * RT_REJECT if no transaction is open (also when SQLite had to roll it
 * back itself after an earlier failure inside it). */
rt_status store_commit(struct store *st);

/* Rolls back the open transaction; does nothing when none is open. */
rt_status store_rollback(struct store *st);

/* ---- group commits (store_sync.c) ----------------------------------- *
 *
 * By default every commit is synced before store_commit() returns
 * (synchronous=FULL): what remotetaskctl records is on disk when it exits.
 * The daemon turns lazy commits on: a commit then returns once SQLite has
 * written it to the WAL (synchronous=NORMAL, no fsync), and one sync of
 * the WAL at the end of a loop pass makes every commit of that pass
 * durable at once. Nothing is reordered: an effect that must not happen
 * before a commit is durable (an ack, a publish carrying a seq just
 * allocated) takes the commit's number with store_mark(), waits until
 * store_durable() says so, and asks for the sync with store_want_sync();
 * the daemon calls store_sync() at the end of the pass (or of a later one
 * while its poll keeps finding work, daemon_loop.c), and the listeners
 * (store_listen) then send what waited. A step that must be durable before
 * the very next thing it does (the intent before a create or a note edit)
 * commits with store_commit_durable(). A commit nobody waits for is synced
 * by the next sync or checkpoint, and the daemon syncs one that no later
 * sync covered within a second (daemon_loop.c); a power cut before that
 * makes its work be done again (a view, a republish the server finds
 * already applied), never lose a task. */

#define STORE_LISTENERS_MAX 8

/* What the syncs cost, for status, metrics and bench/run. syncs counts the
 * fsyncs of the store's files this handle caused: one per commit in
 * synchronous=FULL, one per store_sync() that had something to sync, two
 * per checkpoint that copied pages (the WAL before, the database after). */
struct store_sync_stats {
    uint64_t commits;
    uint64_t syncs;
    uint64_t checkpoints;
    uint64_t unsynced; /* a gauge: the commits not yet known to be on disk */
};

/* Lazy (true) or synced (false) commits from now on. Turning lazy commits
 * off syncs what is pending first. */
rt_status store_set_lazy(struct store *st, bool lazy);

/* The number of the last commit made on this handle (0 before the first). */
uint64_t store_mark(const struct store *st);

/* True when the commit numbered mark is on disk (always, when commits are
 * not lazy). */
bool store_durable(const struct store *st, uint64_t mark);

/* Asks for a store_sync() at the end of this loop pass. */
void store_want_sync(struct store *st);

/* Asks for the end of this loop pass without asking for a sync: the
 * store_listen_before() listeners commit what they gathered, and the
 * store_listen() ones run, but the commit waits for the next sync. For
 * work whose commit nobody waits on (the relay's confirmations: lost in a
 * power cut, their events are sent again under new seqs, and the server
 * finds them already applied). */
void store_want_pass_end(struct store *st);

/* True when store_want_sync() or store_want_pass_end() was called since
 * the last store_sync(). */
bool store_sync_wanted(const struct store *st);

/* If a sync or a pass end was wanted, runs the store_listen_before()
 * listeners; then, unless only a pass end was wanted, syncs the WAL when a
 * commit is not yet on disk (one fsync for all of them); then, if either
 * was wanted, runs the listeners. RT_RETRY when the sync failed (the
 * reason in store_strerror(); the sync stays wanted, so the next pass
 * tries again, and nothing that waits is released). Not inside a
 * transaction; not from a listener (RT_REJECT). */
rt_status store_sync(struct store *st);

/* Commits as store_commit(), then syncs at once: for a step whose very
 * next action must not happen unless the commit is durable. */
rt_status store_commit_durable(struct store *st);

/* Runs fn(arg) after every store_sync() that was wanted (a sync or a pass
 * end: a listener checks store_durable() for what it releases), in the
 * order registered; RT_REJECT when STORE_LISTENERS_MAX are registered. A
 * listener may commit and call store_want_sync() (for the next pass). */
rt_status store_listen(struct store *st, void (*fn)(void *arg), void *arg);

/* Runs fn(arg) at the end of a loop pass whose sync or pass end was
 * wanted, before the sync: a component that gathers the pass's work into
 * one commit (the relay's confirmations) commits it here, and that commit
 * is in the sync, if there is one. Same limits as store_listen(). */
rt_status store_listen_before(struct store *st, void (*fn)(void *arg), void *arg);

/* True when commits are lazy (store_set_lazy). */
bool store_lazy(const struct store *st);

/* Removes what store_listen() or store_listen_before() registered with
 * (fn, arg); nothing if absent. */
void store_unlisten(struct store *st, void (*fn)(void *arg), void *arg);

void store_sync_stats(const struct store *st, struct store_sync_stats *out);

/* ---- outbox (client side) -------------------------------------------- */

/* Records an event for (client, task) at now_ms: a new row, or the existing
 * row with gen and events bumped and last_ms set. A row waiting for a
 * backoff becomes due at once (next_ms = now_ms), so that a new event is
 * not delayed by an old failure; its attempts count is kept. When this
 * returns RT_OK the event is on disk. */
rt_status store_outbox_add(struct store *st, const char *client, int64_t task, int64_t now_ms);

/* Fills out[0..*n) with at most max rows whose next_ms <= now_ms, oldest
 * first_ms first. *n is 0 when nothing is due. */
rt_status store_outbox_due(struct store *st, int64_t now_ms, size_t max, struct store_event *out,
                           size_t *n);

/* Deletes the row of (client, task) if its gen is still gen, i.e. if no
 * event was recorded since it was read. *deleted (may be NULL) tells
 * whether it was; a row left in place is published again. */
rt_status store_outbox_done(struct store *st, const char *client, int64_t task, uint64_t gen,
                            bool *deleted);

/* After a failed attempt: attempts + 1, not due before next_ms, error kept
 * (cut to STORE_ERROR_MAX bytes; NULL clears it) for the status command.
 * Does nothing if the row is gone. */
rt_status store_outbox_defer(struct store *st, const char *client, int64_t task, int64_t next_ms,
                             const char *error);

/* Brings back rows deferred by a clock that was ahead of now_ms: every row
 * not due at now_ms becomes due back_ms earlier (the wall clock went back
 * by back_ms; 0 when unknown), and at most max_delay_ms after now_ms (the
 * longest deferral the caller ever makes), never before now_ms. *n (may
 * be NULL) receives the number of rows moved. */
rt_status store_outbox_reschedule(struct store *st, int64_t now_ms, int64_t back_ms,
                                  int64_t max_delay_ms, uint64_t *n);

/* How many rows wait, and the first_ms of the oldest (0 when none). Either
 * pointer may be NULL. */
rt_status store_outbox_backlog(struct store *st, uint64_t *count, int64_t *oldest_first_ms);

/* ---- forward sequence numbers (client side) -------------------------- */

/* Allocates the next seq for (client, task) and stores it before returning,
 * so that a crash after the message was published can never reuse it. The
 * first seq of a task is 1. */
rt_status store_fwd_next_seq(struct store *st, const char *client, int64_t task, uint64_t *seq);

/* Reads what was sent for (client, task); out->found is false (and the
 * rest zero) when nothing was. */
rt_status store_fwd_get(struct store *st, const char *client, int64_t task, struct store_fwd *out);

/* Records that the broker confirmed the message with this seq, whose
 * forward fields have fingerprint fp, at now_ms. A confirmation older than
 * the one recorded (smaller seq) changes nothing. RT_REJECT for an fp
 * longer than STORE_FP_MAX. */
rt_status store_fwd_confirm(struct store *st, const char *client, int64_t task, uint64_t seq,
                            const char *fp, int64_t now_ms);

/* Records the task's `updated` value as last seen (at most
 * STORE_UPDATED_MAX bytes, else RT_REJECT), creating the row if needed and
 * leaving the seq alone: reconciliation skips a task whose `updated` has
 * not moved since. */
rt_status store_fwd_seen(struct store *st, const char *client, int64_t task, const char *updated);

/* Forgets what was last sent for a task (client side, resync): its
 * fingerprint and its `updated` value become "", so that the relay
 * publishes the task's current state even if it did not change, and the
 * reconciliation sees the task as changed. The seq and fp_seq are kept, so
 * the next message still goes after every earlier one. task 0 = every
 * task of the client. *n (may be NULL) receives the number of tasks
 * touched (0 when nothing was ever sent for it). */
rt_status store_fwd_forget(struct store *st, const char *client, int64_t task, uint64_t *n);

/* Records an event at now_ms, as store_outbox_add() does, for every task of
 * the client that has a fwd row (every task ever seen or sent), in one
 * statement. *n (may be NULL) receives the number of events recorded. */
rt_status store_outbox_add_known(struct store *st, const char *client, int64_t now_ms, uint64_t *n);

/* ---- links (server side) --------------------------------------------- */

/* Reads the link of (client, src_task); out->found is false when there is
 * none. */
rt_status store_link_get(struct store *st, const char *client, int64_t src_task,
                         struct store_link *out);

/* Finds the link whose target task is dst_task for this client; if several
 * exist (which the applier never makes) the one with the smallest
 * src_task. out->found is false when there is none. */
rt_status store_link_by_dst(struct store *st, const char *client, int64_t dst_task,
                            struct store_link *out);

/* Inserts or replaces the link (link->client, link->src_task) with every
 * field of *link (found is ignored). */
rt_status store_link_put(struct store *st, const struct store_link *link);

/* Allocates the next reverse seq of an existing link and stores it before
 * returning (as store_fwd_next_seq() does for forward messages). RT_REJECT
 * when the link does not exist. */
rt_status store_link_next_rev_seq(struct store *st, const char *client, int64_t src_task,
                                  uint64_t *seq);

/* Forgets what was last published back for linked tasks (server side,
 * resync): rev_fp becomes "" and the "state" key leaves applied, so that
 * the timer publisher views each task again and publishes its state even
 * if it did not change. The other keys of applied (what forward applied)
 * and the seqs are kept. src_task 0 = every link of the client; client
 * NULL = every link of every client. Runs in its own transaction unless
 * one is open. *n (may be NULL) receives the number of links touched. */
rt_status store_link_forget_state(struct store *st, const char *client, int64_t src_task,
                                  uint64_t *n);

/* Counts the links of one client, or of all clients when client is NULL. */
rt_status store_link_count(struct store *st, const char *client, uint64_t *n);

/* Lists a client's links in src_task order, starting after after_src_task
 * (pass 0, or INT64_MIN, for the first batch; then the last src_task
 * returned). Fills out[0..*n) with at most max links; *n < max means the
 * list is finished. */
rt_status store_link_list(struct store *st, const char *client, int64_t after_src_task, size_t max,
                          struct store_link *out, size_t *n);

/* ---- reverse applied state (client side) ----------------------------- */

/* Reads what was applied for (client, task); out->found is false when
 * nothing was. */
rt_status store_rev_get(struct store *st, const char *client, int64_t task, struct store_rev *out);

/* Records the last state seq applied, the notes copied and the fp set of
 * what was applied (NULL = "", at most STORE_APPLIED_MAX bytes) for
 * (client, task). */
rt_status store_rev_put(struct store *st, const char *client, int64_t task, uint64_t seq,
                        uint64_t notes_applied, const char *applied);

/* ---- retry copies under watch (both sides, store_retry.c) ------------ *
 * An applier that sends a delivery to a delay queue (a retry copy) acks
 * the delivery once the broker confirms the copy: from then on the copy
 * is the task's only message, and the broker's dead-lettering is what
 * brings it back. A broker can lose it there (RabbitMQ 3.10's at-least-once
 * dead-lettering drops or strands messages when a quorum queue's leader
 * dies; a delay queue can be purged or deleted by hand). So the copy is
 * kept here, one row per (dir, client, task), from its confirm until a
 * delivery of that task with its seq or a newer one comes back; a row
 * still here when it is due is sent again by the applier. */

/* The texts of a watched copy (a user, a message id) are cut to this. */
#define STORE_RETRY_TEXT_MAX 256
/* A watched body is at most this long (the codec's own cap). */
#define STORE_RETRY_BODY_MAX ((size_t)4 * 1024 * 1024)

struct store_retry {
    int dir; /* the applier's direction (enum broker_dir), 0..15 */
    char client[STORE_CLIENT_MAX + 1];
    int64_t task;
    uint64_t seq;     /* the copy's seq: a delivery with this seq or newer clears it */
    int64_t attempts; /* x-rt-attempts of the copy */
    int64_t due_ms;   /* wall ms: sent again when still here at this time */
    char user[STORE_RETRY_TEXT_MAX];       /* x-rt-user of the copy */
    char message_id[STORE_RETRY_TEXT_MAX]; /* message_id of the copy */
    char reason[STORE_ERROR_MAX + 1];      /* x-rt-error of the copy */
    /* store_retry_put: borrowed. store_retry_due: malloc'ed, freed by
     * store_retry_release(). */
    unsigned char *body;
    size_t len;
};

/* Watches a copy: inserts its row, or replaces the row of the same
 * (dir, client, task) unless that one has a newer seq. RT_REJECT for a
 * client, text or body over its cap. */
rt_status store_retry_put(struct store *st, const struct store_retry *r);

/* A delivery of (dir, client, task) with seq came back: the row of that
 * task goes when its seq is not newer. *cleared (may be NULL) receives 1
 * when a row went, else 0. */
rt_status store_retry_clear(struct store *st, int dir, const char *client, int64_t task,
                            uint64_t seq, uint64_t *cleared);

/* Fills out[0..*n) with at most max rows of dir whose due_ms <= now_ms,
 * the earliest due first, bodies malloc'ed; release them with
 * store_retry_release(). RT_RETRY also when memory ran out. */
rt_status store_retry_due(struct store *st, int dir, int64_t now_ms, size_t max,
                          struct store_retry *out, size_t *n);

/* Frees the bodies store_retry_due() gave out[0..n). */
void store_retry_release(struct store_retry *out, size_t n);

/* The row of (dir, client, task) with this seq becomes due at due_ms
 * (after it was sent again). Nothing when the row is gone or newer. */
rt_status store_retry_push(struct store *st, int dir, const char *client, int64_t task,
                           uint64_t seq, int64_t due_ms);

/* How many copies of dir are watched. */
rt_status store_retry_count(struct store *st, int dir, uint64_t *n);

/* ---- meta ------------------------------------------------------------ */

/* Copies the value of key into buf (NUL-terminated); *found tells whether
 * the key exists (buf is "" when not). RT_REJECT when the value does not
 * fit in buflen, or for a key longer than STORE_META_KEY_MAX. */
rt_status store_meta_get(struct store *st, const char *key, char *buf, size_t buflen, bool *found);

/* Sets key to value (at most STORE_META_VALUE_MAX bytes, else RT_REJECT). */
rt_status store_meta_set(struct store *st, const char *key, const char *value);

/* The same for integer values (times, counters): *value is 0 when the key
 * does not exist; RT_REJECT when the stored value is not an integer. */
rt_status store_meta_get_i64(struct store *st, const char *key, int64_t *value, bool *found);
rt_status store_meta_set_i64(struct store *st, const char *key, int64_t value);

#endif
