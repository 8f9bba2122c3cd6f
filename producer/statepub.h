/*
 * statepub.h - the server side of the reverse path: the timer publisher.
 *
 * Every server.sync_interval seconds (the first time shortly after start),
 * and at once on a sync request, the publisher runs one *cycle* per
 * configured client C: it lists C's department on this side's BILLmanager
 * (func_task, filter=on&<field_department>=D, page by page with p_cnt =
 * api.page_size) and, for every listed task that is the target of a link
 * of C, compares the list-level fingerprint of the row (status column,
 * performer display name, `updated`) with the link's rev_fp. Equal means
 * nothing changed since the last cycle and costs nothing more. Different
 * means a view (func_task_edit elid=N) to read the state: status,
 * performer id, the performer's display name from the list and the native
 * note (the note minus the blocks the bridge appended, common/notes.h).
 * When the fingerprint of that state equals the "state" key of the link's
 * applied set nothing is published and only rev_fp is recorded, so that
 * the next cycle skips the task without a view; otherwise a CODEC_STATE
 * message with the next reverse seq of the link goes to
 * remotetask.reverse with routing key C and message_id "<C>:<src>:r<seq>".
 *
 * When the broker acks a state message, one store transaction re-reads the
 * link and records rev_fp, applied "state", applied "status" (the status
 * just published: the forward applier compares an incoming status with it,
 * which is what keeps the client's echo of it from writing to the target)
 * and notes_sent; every other field of the link is kept. A nack, a return
 * or a store failure records nothing, so the next cycle publishes again; a
 * publish lost with the connection is published again once connected.
 *
 * Cost: a cycle over 10,000 linked tasks of which 1% changed makes the list
 * pages (10 with page_size 1000) and about 100 views, never one call per
 * task. A row without an `updated` value cannot tell a note change, so it
 * is always viewed (as the relay does for reconciliation).
 *
 * Limits: never two cycles of one client at once (a sync request during a
 * cycle queues one more cycle right after it); at most
 * billmanager.max_inflight views in flight from this module, the clients
 * taking turns; a client's next list page waits while page_size of its
 * tasks wait for a view, so memory stays bounded by the page size;
 * publishes are pipelined (at most STATEPUB_MAX_UNCONFIRMED awaiting their
 * confirm). A cycle ends when its list is finished and every task it took
 * is done (published and confirmed, or unchanged, or failed).
 *
 * Sync requests (statepub_sync, called by the bridge when a client's
 * CODEC_SYNC arrives): the request joins the next cycle of that client,
 * which starts at once when none runs. When that cycle ends with nothing
 * failed, a CODEC_SYNC_DONE {id, count} goes to remotetask.reverse with
 * routing key C after every state message of the cycle was confirmed, so
 * it reaches the client's queue behind them; count is the number of state
 * messages confirmed for the request. A cycle in which something failed
 * (a list page, a view, a publish, a commit; a task deleted between the
 * list and its view is not a failure) carries its requests over, counts
 * kept, to another cycle STATEPUB_RETRY_DELAY_MS later; without waiting
 * requests the next cycle comes after sync_interval as usual.
 *
 * Answers are read only where they can be: a list row whose id (or
 * performer) is not text (billmgr_text_field: a field of the wrong type,
 * such as repeated elements where text belongs) fails the list page, and
 * a view that is not the view of the task asked for (its elid or id, one
 * at least, is that task) or whose status, performer or note is not text
 * fails the view, so that the cycle is incomplete and retried rather than
 * an empty note, status 0 or no performer published. A missed error means
 * the task was deleted only when its $object is elid or task; one naming
 * the view function (func, or its configured name) is a configuration
 * error, logged at error once until a view succeeds, and fails the view,
 * as does one naming anything else or nothing.
 *
 * A listed row may be seen twice when tasks move between pages during a
 * cycle; it is then viewed twice and may be published twice, which the
 * client takes as a newer message of the same state.
 *
 * Everything is asynchronous: API calls go through billmgr_call() and their
 * callbacks run inside billmgr_handle(); publishes go through
 * broker_publish() and their fate arrives through statepub_on_confirm().
 * Times passed in and returned (now_ms) are CLOCK_MONOTONIC milliseconds
 * (between ticks the publisher moves the ticks' clock on by the monotonic
 * clock): a wall clock set back never stalls the cycles. The wall clock
 * only stamps what is sent or stored (message times, the last cycle's
 * time).
 *
 * Teardown order, as for the relay: billmgr_free() (which cancels the
 * publisher's calls without their callbacks) BEFORE statepub_free(), and
 * no confirms routed to a freed publisher. Nothing is lost by tearing down
 * at any moment: what was not confirmed is published by a later cycle.
 */
#ifndef RT_STATEPUB_H
#define RT_STATEPUB_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "billmgr.h"
#include "broker.h"
#include "config.h"
#include "fp.h"
#include "rt.h"
#include "store.h"

/* The first cycles start this long after the first tick. */
#define STATEPUB_FIRST_CYCLE_DELAY_MS 1000
/* A cycle that failed while sync requests wait for it is run again after
 * this long, not after a whole sync_interval. */
#define STATEPUB_RETRY_DELAY_MS 5000
/* The longest statepub_tick() asks to sleep (commits refused by the store
 * and publishes refused by the broker are retried that often). */
#define STATEPUB_TICK_MS 1000
/* Publishes awaiting a confirm at once. */
#define STATEPUB_MAX_UNCONFIRMED 4096
/* Sync requests kept per client; past this the oldest is dropped. */
#define STATEPUB_MAX_SYNCS 32
/* A list chain stops after this many pages of one department: a server
 * that ignores p_num would otherwise keep it paging forever. */
#define STATEPUB_MAX_PAGES 100000L
/* The meta key that keeps when the last cycle ended (status command). */
#define STATEPUB_META_LAST_CYCLE "last_reverse_cycle_ms"

/* Counters since statepub_new (gauges say so). */
struct statepub_stats {
    uint64_t cycles;                /* cycles completed (failed ones included) */
    uint64_t cycles_failed;         /* cycles in which a page, view, publish or
                                       commit failed */
    uint64_t rows_seen;             /* list rows read */
    uint64_t views;                 /* views answered successfully */
    uint64_t view_failed;           /* views that failed */
    uint64_t published;             /* state messages handed to the broker */
    uint64_t confirmed;             /* state messages acked and committed */
    uint64_t publish_failed;        /* nacked, returned, refused or not encodable */
    uint64_t unchanged;             /* viewed, same state as last published */
    uint64_t syncs_requested;       /* sync requests accepted */
    uint64_t syncs_served;          /* sync_done messages acked by the broker */
    int64_t last_cycle_ms;          /* when the last cycle ended (also from
                                       earlier runs, via the store); 0 = never */
    int64_t last_cycle_duration_ms; /* how long it took */
    size_t running;                 /* gauge: cycles running now */
    size_t viewing;                 /* gauge: views in flight */
    size_t waiting;                 /* gauge: tasks waiting for a view */
    size_t unconfirmed;             /* gauge: publishes awaiting a confirm */
};

/* The state of a target task as it travels (struct codec_state), read
 * from a view and a list row. Strings are malloc'd and owned;
 * statepub_state_release() frees them. */
struct statepub_state {
    int status;           /* 0..2 */
    int64_t performer_id; /* 0 = none */
    char *performer;      /* display name from the list, "" = none */
    char *native;         /* the native note, at most CODEC_MAX_NOTE_ENTRY
                             bytes (cut at a UTF-8 boundary) */
    size_t native_len;    /* strlen(native) */
    int cut;              /* 1 when the native note was longer and cut */
};

struct statepub;

/* Makes the timer publisher of the server role. cfg, st, bm and br are
 * borrowed and must outlive it (see the teardown order above);
 * cfg->server must be enabled. Starts nothing: the first statepub_tick()
 * schedules the first cycles. Returns NULL with a reason in err
 * (NUL-terminated when errlen > 0) when the config has no server role or
 * memory ran out. */
struct statepub *statepub_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                              struct broker *br, char *err, size_t errlen);

/* Frees the publisher and everything it holds. Accepts NULL. Must be
 * called after billmgr_free() of its billmgr (or with no API call of the
 * publisher in flight): it cancels no call. */
void statepub_free(struct statepub *sp);

/* Does the work due at now_ms (monotonic): commits acks the store refused
 * earlier (none after one refused again), starts the cycles that are due,
 * publishes what waits for the broker and starts views. Returns the
 * monotonic time at which it wants the next tick, at most
 * now_ms + STATEPUB_TICK_MS. */
int64_t statepub_tick(struct statepub *sp, int64_t now_ms);

/* The fate of a publish. Tags the publisher did not publish are ignored,
 * so the bridge may hand every confirm to every component. May publish
 * (the broker allows that from its callbacks). */
void statepub_on_confirm(struct statepub *sp, uint64_t tag, enum broker_fate fate);

/* The broker is (re)connected and its topology declared: publishes
 * waiting for it go out now. */
void statepub_on_connected(struct statepub *sp);

/* Runs a cycle for client now (or right after the running one) and, when
 * it ends, publishes CODEC_SYNC_DONE {id = sync_id, count} as described
 * above. Returns RT_OK when the request was taken; RT_REJECT (logged)
 * when client is not a configured client, sync_id is empty or longer
 * than CODEC_MAX_ID, or the publisher is draining. Copies both strings. */
rt_status statepub_sync(struct statepub *sp, const char *client, const char *sync_id);

/* Makes every client's next cycle due at now_ms (monotonic; a resync): the next
 * statepub_tick() starts it, or, for a client whose cycle runs, it starts
 * right after that one ends. No sync_done is published for it. Does
 * nothing while draining. */
void statepub_kick(struct statepub *sp, int64_t now_ms);

/* Stops starting new work (SIGTERM): no new cycles, pages, views or
 * publishes; tasks waiting for a view or for the broker are let go, and
 * pending sync requests are dropped (their clients time out). Views,
 * pages and confirms in flight finish. Not undone. */
void statepub_drain(struct statepub *sp);

/* 1 when the publisher holds nothing: no task waiting, being viewed,
 * waiting for the broker, awaiting a confirm or a commit, and no list
 * call in flight. */
int statepub_idle(const struct statepub *sp);

/* Copies the counters into *out. */
void statepub_stats(const struct statepub *sp, struct statepub_stats *out);

/* ---- pure helpers, exported for the unit tests ---- */

/* The list-level fingerprint of a row of func_task: its status, performer
 * (display name) and `updated` columns, with the column names of
 * cfg->billmanager.api, as FP_HEX_LEN hex digits. A missing column counts
 * as "". */
void statepub_row_fp(const struct config *cfg, json_t *row, char out[FP_HEX_LEN + 1]);

/* Reads the state of a task from the doc of a func_task_edit view (field
 * names of cfg->billmanager.api) and the performer's display name of its
 * list row (NULL = ""). A missing or empty status counts as 0, an empty
 * performer as 0. Returns 0 with *out filled; -1 with a reason in err
 * (NUL-terminated when errlen > 0) when the status, performer or note is
 * not text ("its F is not text"; it is never read as empty), the status
 * is not 0, 1 or 2, the performer is not a number >= 0, or memory ran
 * out. *out needs no
 * initialization; release it with statepub_state_release() after any
 * return. The performer name is cut to CODEC_MAX_PERFORMER bytes and the
 * native note to CODEC_MAX_NOTE_ENTRY bytes, at UTF-8 boundaries. */
int statepub_state_from_doc(const struct config *cfg, json_t *doc, const char *performer_name,
                            struct statepub_state *out, char *err, size_t errlen);

/* Frees the strings of *s and zeroes it. Accepts a zeroed struct. */
void statepub_state_release(struct statepub_state *s);

/* The state fingerprint: status, performer id, performer name and native
 * note, as FP_HEX_LEN hex digits. */
void statepub_state_fp(const struct statepub_state *s, char out[FP_HEX_LEN + 1]);

/* 1 when a cycle may start one more view: it has fewer than max_views
 * (max_inflight) running, and either fewer than its floor of max_views / 4
 * (at least one), or the API has room (api_room: billmgr_has_room) with
 * api_inflight (billmgr_inflight: every caller's calls) below max_views
 * less a reserve of max_views / 4 for the appliers. */
int statepub_view_may_start(size_t viewing, size_t max_views, size_t api_inflight, int api_room);

/* The applied set of a link after a state was published and acked:
 * applied (NULL = "") with "state" = state_fp and "status" = status set,
 * every other key kept, written into out (outlen bytes). Returns 0, or -1
 * when the result does not fit (out then holds applied unchanged). */
int statepub_applied_update(const char *applied, const char *state_fp, int status, char *out,
                            size_t outlen);

/* The length of the longest prefix of s that is at most max bytes and does
 * not end inside a UTF-8 sequence. */
size_t statepub_utf8_cut(const char *s, size_t max);

#endif
