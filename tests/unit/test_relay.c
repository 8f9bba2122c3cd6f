/* Unit tests of producer/relay: the forward fields read from a view, their
 * fingerprint, the backoff, and the relay's behaviour driven end to end
 * against a real store (in a temporary directory), a real billmgr client
 * talking to a small BILLmanager stand-in on a loopback socket (a thread of
 * this program), and a recording stand-in for the broker: the producer's
 * fixture (tests/unit/support/producer), shared with test_statepub.
 *
 * The unit-test target links rtconfig and rtcommon only, so the relay is
 * compiled into this program by including its sources. The broker is
 * replaced by the fixture's definitions of the four broker functions the
 * relay calls; nothing else in rtcommon refers to them, so the linker
 * never pulls the broker's own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <cmocka.h>

#include "../../producer/relay.c"
#include "../../producer/relay_recon.c"
#include "../../producer/relay_slot.c"
#include "../../producer/relay_view.c"
#include "../../producer/pager.c"
#include "../../producer/taskview.c"

#include "config.h"
#include "config_opts.h"
#include "fake_bill.h"
#include "fake_broker.h"
#include "fake_doc.h"
#include "fixture.h"
#include "log.h"
#include "stderr_capture.h"

/* ---- the BILLmanager stand-in's half of this test ------------------- */

/* The task as the view (func "task.view") shows it, with the custom field
 * names the test config sets. */
static json_t *task_doc(const struct fake_task *t)
{
    json_t *d = json_object();
    fake_doc_long(d, "id", t->id);
    fake_doc_long(d, "dept", t->department);
    fake_doc_text(d, "subject", t->name);
    fake_doc_text(d, "type", "postopen");
    fake_doc_text(d, "note", t->note);
    fake_doc_text(d, "mtime", t->updated);
    fake_doc_long(d, "state", t->status);
    if (t->item)
        fake_doc_long(d, "item", t->item);
    fake_doc_long(d, "client", 5);
    return d;
}

/* The task as a list row ("task.list") shows it: the department's name. */
static json_t *task_row(const struct fake_task *t)
{
    json_t *e = json_object();
    fake_doc_long(e, "id", t->id);
    fake_doc_text(e, "dept", "Upstream"); /* lists show names */
    fake_doc_text(e, "mtime", t->updated);
    return e;
}

static void sim_task(long id, long dept, const char *name, const char *note, const char *upd)
{
    struct fake_task t = {.exists = 1, .id = id, .department = dept, .item = 42};
    snprintf(t.name, sizeof t.name, "%s", name);
    snprintf(t.note, sizeof t.note, "%s", note);
    snprintf(t.updated, sizeof t.updated, "%s", upd);
    fake_bill_put(&t);
}

/* ---- the fixture ----------------------------------------------------- */

static void make_relay(struct fixture *fx)
{
    char err[256];
    fx->r = relay_new(fx->cfg, fx->st, fx->bm, (struct broker *)&fx->fake_br, err, sizeof err);
    assert_non_null(fx->r);
}

static void release_relay(struct fixture *fx)
{
    relay_free(fx->r);
}

static void tick_relay(struct fixture *fx)
{
    relay_tick(fx->r, clock_mono_ms());
}

static const struct fixture_kind relay_kind = {
    .name = "relay",
    .amqp_user = "u",
    .api = "",
    .role = "client: { id = \"7\"; server_user = \"srv\"; poll_interval = 3600;\n"
            "  departments = ( { local = 3; remote = 12; }, { local = 8; remote = 13; } ); };",
    .busy_ms = 50, /* as the daemon's: a held lock fails fast */
    .view_doc = task_doc,
    .list_row = task_row,
    .make = make_relay,
    .release = release_relay,
    .tick = tick_relay,
};

static int setup(void **state)
{
    *state = fixture_new(&relay_kind);
    return 0;
}

static int teardown(void **state)
{
    fixture_free(*state);
    return 0;
}

static int calls_done(struct fixture *fx)
{
    return billmgr_inflight(fx->bm) == 0 && relay_idle(fx->r);
}

static int one_published(struct fixture *fx)
{
    (void)fx;
    return fake_broker.n >= 1;
}

static int two_published(struct fixture *fx)
{
    (void)fx;
    return fake_broker.n >= 2;
}

static int three_published(struct fixture *fx)
{
    (void)fx;
    return fake_broker.n >= 3;
}

/* No API call in flight and no row being viewed (rows may wait for the
 * broker or for a confirm). */
static int nothing_viewing(struct fixture *fx)
{
    if (billmgr_inflight(fx->bm) != 0)
        return 0;
    for (size_t i = 0; i < fx->r->nslots; i++)
        if (fx->r->slots[i].state == SLOT_VIEWING)
            return 0;
    return 1;
}

static int recon_done_once(struct fixture *fx)
{
    struct relay_stats s;
    relay_stats(fx->r, &s);
    return s.reconciliations >= 1 && !s.reconciling;
}

static uint64_t backlog(struct fixture *fx)
{
    uint64_t n = 0;
    assert_int_equal(store_outbox_backlog(fx->st, &n, NULL), RT_OK);
    return n;
}

static void add_event(struct fixture *fx, int64_t task)
{
    assert_int_equal(store_outbox_add(fx->st, "7", task, fixture_wall_ms()), RT_OK);
    relay_wake(fx->r, 0);
}

/* The first tick runs the start-up reconciliation; let it finish on an
 * empty BILLmanager so that later tests see only their own events. */
static void settle(struct fixture *fx)
{
    fixture_run_until(fx, recon_done_once, "the start-up reconciliation");
    fixture_run_until(fx, calls_done, "the relay to settle");
}

/* ---- pure helpers ---------------------------------------------------- */

static void backoff_doubles_and_caps(void **state)
{
    (void)state;
    assert_int_equal(relay_backoff_ms(0), 1000);
    assert_int_equal(relay_backoff_ms(1), 2000);
    assert_int_equal(relay_backoff_ms(3), 8000);
    assert_int_equal(relay_backoff_ms(8), 256000);
    assert_int_equal(relay_backoff_ms(9), RELAY_BACKOFF_MAX_MS);
    assert_int_equal(relay_backoff_ms(UINT64_MAX), RELAY_BACKOFF_MAX_MS);
}

static void fields_read_with_configured_names(void **state)
{
    struct fixture *fx = *state;
    struct relay_fields f, g;
    char a[FP_HEX_LEN + 1], b[FP_HEX_LEN + 1];
    struct fake_task t = {.exists = 1, .id = 4, .department = 3, .item = 42, .status = 1};
    snprintf(t.name, sizeof t.name, "Disk");
    snprintf(t.note, sizeof t.note,
             "mine\n\n--- remotetask: from server, task 9 ---\ntheirs\n--- remotetask: end ---\n");
    snprintf(t.updated, sizeof t.updated, "2024-01-02 03:04:05");

    json_t *doc = task_doc(&t);
    assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &f), 1);
    assert_int_equal(f.local_department, 3);
    assert_int_equal(f.department, 12);
    assert_string_equal(f.name, "Disk");
    assert_string_equal(f.type, "postopen");
    assert_string_equal(f.note, "mine\n");
    assert_string_equal(f.item, "service #42");
    assert_string_equal(f.account, "client #5");
    assert_string_equal(f.deadline, "");
    assert_int_equal(f.status, 1);
    assert_string_equal(f.updated, "2024-01-02 03:04:05");
    relay_fields_fp(&f, a);
    assert_int_equal(strlen(a), FP_HEX_LEN);

    /* The appended block and `updated` do not count: same fingerprint. */
    snprintf(t.note, sizeof t.note, "mine\n");
    snprintf(t.updated, sizeof t.updated, "2025-01-01 00:00:00");
    json_decref(doc);
    doc = task_doc(&t);
    assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &g), 1);
    relay_fields_fp(&g, b);
    assert_string_equal(a, b);
    relay_fields_release(&g);

    /* Every travelling field does count. */
    t.item = 0;
    json_decref(doc);
    doc = task_doc(&t);
    assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &g), 1);
    assert_string_equal(g.item, "");
    relay_fields_fp(&g, b);
    assert_string_not_equal(a, b);
    relay_fields_release(&g);
    t.item = 42;
    t.status = 2;
    json_decref(doc);
    doc = task_doc(&t);
    assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &g), 1);
    relay_fields_fp(&g, b);
    assert_string_not_equal(a, b);
    relay_fields_release(&g);

    /* An unmapped department, and none at all. */
    t.department = 4;
    json_decref(doc);
    doc = task_doc(&t);
    assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &g), 0);
    assert_int_equal(g.local_department, 4);
    relay_fields_release(&g);
    json_object_del(doc, "dept");
    assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &g), 0);
    relay_fields_release(&g);

    /* A status that is not a number is kept as -1 for the encoder to refuse. */
    t.department = 3;
    json_decref(doc);
    doc = task_doc(&t);
    fake_doc_text(doc, "state", "open");
    assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &g), 1);
    assert_int_equal(g.status, -1);
    relay_fields_release(&g);

    relay_fields_release(&f);
    relay_fields_release(&f); /* released twice: harmless */
    json_decref(doc);
}

static void reconcile_decision(void **state)
{
    (void)state;
    struct store_fwd fwd = {0};
    assert_int_equal(relay_recon_needs_event(&fwd, "2024-01-01 00:00:00"), 1);
    fwd.found = true;
    snprintf(fwd.updated, sizeof fwd.updated, "2024-01-01 00:00:00");
    assert_int_equal(relay_recon_needs_event(&fwd, "2024-01-01 00:00:00"), 0);
    assert_int_equal(relay_recon_needs_event(&fwd, "2024-01-01 00:00:01"), 1);
    assert_int_equal(relay_recon_needs_event(&fwd, NULL), 1);
    assert_int_equal(relay_recon_needs_event(&fwd, ""), 1);
    assert_int_equal(relay_recon_needs_event(&fwd, "0123456789012345678901234567890123456789"), 1);
}

/* ---- the relay driven end to end ------------------------------------- */

static void publishes_then_commits_on_ack(void **state)
{
    struct fixture *fx = *state;
    struct store_fwd fwd;
    struct relay_stats s;
    settle(fx);
    sim_task(5, 3, "Set up VPS", "please\n", "2024-05-01 10:00:00");
    add_event(fx, 5);
    fixture_run_until(fx, one_published, "the publish");

    struct fake_published *p = &fake_broker.pub[0];
    assert_string_equal(p->exchange, BROKER_EXCHANGE_FORWARD);
    assert_string_equal(p->key, "7");
    assert_string_equal(p->message_id, "7:5:1");
    assert_int_equal(p->msg.kind, CODEC_TASK);
    assert_string_equal(p->msg.client, "7");
    assert_int_equal(p->msg.task, 5);
    assert_int_equal(p->msg.seq, 1);
    assert_int_equal(p->msg.fwd.department, 12);
    assert_string_equal(p->msg.fwd.name, "Set up VPS");
    assert_string_equal(p->msg.fwd.note, "please\n");
    assert_string_equal(p->msg.fwd.item, "service #42");
    assert_string_equal(p->msg.fwd.account, "client #5");

    /* Not done before the broker's ack. */
    assert_int_equal(backlog(fx), 1);
    relay_on_confirm(fx->r, p->tag + 1000, BROKER_ACKED); /* not ours: ignored */
    assert_int_equal(backlog(fx), 1);
    relay_on_confirm(fx->r, p->tag, BROKER_ACKED);
    assert_int_equal(backlog(fx), 0);
    assert_int_equal(store_fwd_get(fx->st, "7", 5, &fwd), RT_OK);
    assert_true(fwd.found);
    assert_int_equal(fwd.fp_seq, 1);
    assert_int_equal(strlen(fwd.fp), FP_HEX_LEN);
    assert_string_equal(fwd.updated, "2024-05-01 10:00:00");
    relay_stats(fx->r, &s);
    assert_int_equal(s.taken, 1);
    assert_int_equal(s.published, 1);
    assert_int_equal(s.confirmed, 1);
    assert_true(s.last_publish_ms > 0);
    assert_true(relay_idle(fx->r));

    /* The same fields again (an echo of the reverse applier, whose block
     * is not native text): viewed, not published, done. */
    sim_task(5, 3, "Set up VPS",
             "please\n\n--- remotetask: from server, task 77 ---\ndone\n--- remotetask: end ---\n",
             "2024-05-01 11:00:00");
    add_event(fx, 5);
    fixture_run_until(fx, calls_done, "the second view");
    assert_int_equal(fake_broker.n, 1);
    assert_int_equal(backlog(fx), 0);
    assert_int_equal(store_fwd_get(fx->st, "7", 5, &fwd), RT_OK);
    assert_string_equal(fwd.updated, "2024-05-01 11:00:00");
    relay_stats(fx->r, &s);
    assert_int_equal(s.unchanged, 1);
    assert_int_equal(fake_bill_get(&fake_bill.views), 2);

    /* A real change goes out with the next seq. */
    sim_task(5, 3, "Set up VPS today", "please\n", "2024-05-01 12:00:00");
    add_event(fx, 5);
    fixture_run_until(fx, two_published, "the publish of the change");
    assert_string_equal(fake_broker.pub[1].message_id, "7:5:2");
    assert_string_equal(fake_broker.pub[1].msg.fwd.name, "Set up VPS today");
}

static void gone_and_unmapped_are_dropped(void **state)
{
    struct fixture *fx = *state;
    struct relay_stats s;
    settle(fx);
    sim_task(6, 4, "other department", "", "2024-05-01 10:00:00");
    add_event(fx, 6);
    add_event(fx, 9); /* never existed: missed */
    fixture_run_until(fx, calls_done, "the views");
    assert_int_equal(fake_broker.n, 0);
    assert_int_equal(backlog(fx), 0);
    relay_stats(fx->r, &s);
    assert_int_equal(s.dropped, 2);
}

/* Runs fn(fx) with the log's lines (level error and above, as main sets
 * it) captured, and returns how many of them hold needle. */
static int count_log_lines(struct fixture *fx, void (*fn)(struct fixture *), const char *needle)
{
    stderr_capture_begin();
    fn(fx);
    return stderr_capture_end(needle);
}

static void view_two_tasks(struct fixture *fx)
{
    add_event(fx, 5);
    add_event(fx, 6);
    fixture_run_until(fx, calls_done, "the views");
}

/* A missed error whose $object is the function (BILLmanager's answer to a
 * func it does not have, e.g. a misspelt api.func_task_edit) says nothing
 * about the task: the events stay in the outbox like any configuration
 * error, and the cause is logged at error once, not once per task. */
static void missing_view_function_is_not_a_deleted_task(void **state)
{
    struct fixture *fx = *state;
    struct store_event ev[4];
    size_t n;
    struct relay_stats s;
    settle(fx);
    sim_task(5, 3, "kept", "", "2024-05-01 10:00:00");
    sim_task(6, 3, "kept too", "", "2024-05-01 10:00:00");

    const char *objects[] = {"func", "task.view"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(fake_bill.view_missed, sizeof fake_bill.view_missed, "%s", objects[i]);
        int lines = count_log_lines(fx, view_two_tasks, "does not exist");
        assert_int_equal(lines, 1);
        assert_int_equal(fake_broker.n, 0);
        assert_int_equal(backlog(fx), 2);
        relay_stats(fx->r, &s);
        assert_int_equal(s.dropped, 0);
        /* Deferred as a configuration error, not dropped. */
        assert_int_equal(store_outbox_due(fx->st, fixture_wall_ms() + 60000, 4, ev, &n), RT_OK);
        assert_int_equal(n, 0);
        assert_int_equal(
            store_outbox_due(fx->st, fixture_wall_ms() + RELAY_REJECT_DELAY_MS + 1000, 4, ev, &n),
            RT_OK);
        assert_int_equal(n, 2);
        /* Once the function answers again, the events go out, and a later
         * loss of it is logged again. */
        fake_bill.view_missed[0] = '\0';
        add_event(fx, 5);
        add_event(fx, 6);
        fixture_run_until(fx, two_published, "the publishes");
        for (size_t k = 0; k < fake_broker.n; k++)
            relay_on_confirm(fx->r, fake_broker.pub[k].tag, BROKER_ACKED);
        assert_int_equal(backlog(fx), 0);
        fake_broker_reset();
        /* Changed, so that the next round publishes again. */
        sim_task(5, 3, "kept, changed", "", "2024-05-01 10:00:01");
        sim_task(6, 3, "kept too, changed", "", "2024-05-01 10:00:01");
    }

    /* A missed task is still a deleted one. */
    fake_bill.tasks[5].exists = 0;
    add_event(fx, 5);
    fixture_run_until(fx, calls_done, "the view of the deleted task");
    relay_stats(fx->r, &s);
    assert_int_equal(s.dropped, 1);
    assert_int_equal(backlog(fx), 0);
}

/* Group commits: with the daemon's lazy store a seq goes out only after
 * the store's sync, and the confirmations of one loop pass are recorded
 * in one commit at its end. */
static int three_viewed(struct fixture *fx)
{
    struct relay_stats s;
    relay_stats(fx->r, &s);
    return billmgr_inflight(fx->bm) == 0 && s.in_progress == 3;
}

static void group_commits_hold_and_batch(void **state)
{
    struct fixture *fx = *state;
    struct store_sync_stats a, b;
    settle(fx);
    assert_int_equal(store_set_lazy(fx->st, true), RT_OK);
    for (int64_t t = 5; t <= 7; t++) {
        sim_task(t, 3, "grouped", "", "2024-05-01 10:00:00");
        add_event(fx, t);
    }
    fixture_run_until(fx, three_viewed, "the three views");
    /* The seqs are allocated, not yet on disk: nothing is published. */
    assert_int_equal(fake_broker.n, 0);
    assert_true(store_sync_wanted(fx->st));
    assert_int_equal(store_sync(fx->st), RT_OK);
    assert_int_equal(fake_broker.n, 3);
    /* Confirmed: recorded at the end of the pass, all in one commit. */
    for (size_t k = 0; k < fake_broker.n; k++)
        relay_on_confirm(fx->r, fake_broker.pub[k].tag, BROKER_ACKED);
    assert_int_equal(backlog(fx), 3);
    store_sync_stats(fx->st, &a);
    assert_int_equal(store_sync(fx->st), RT_OK);
    store_sync_stats(fx->st, &b);
    assert_int_equal(backlog(fx), 0);
    assert_int_equal(b.commits - a.commits, 1);
    /* Nothing waits for that commit: no fsync for it. */
    assert_int_equal(b.syncs - a.syncs, 0);
    assert_false(store_durable(fx->st, store_mark(fx->st)));
    assert_true(relay_idle(fx->r));
    struct relay_stats s;
    relay_stats(fx->r, &s);
    assert_int_equal(s.confirmed, 3);
    assert_int_equal(store_set_lazy(fx->st, false), RT_OK);
}

/* A window confirmed whole frees its slots at the end of the pass
 * (relay_pass_end), after the confirmations' own callbacks pumped. The
 * rows left in the outbox must be taken right after that pass's sync, not
 * at the next tick: in a drain the window would otherwise empty and wait
 * up to RELAY_SCAN_INTERVAL_MS with nothing in flight (bench/run's relay
 * lost more than half its rate to those waits). */
static int window_viewed(struct fixture *fx)
{
    struct relay_stats s;
    relay_stats(fx->r, &s);
    return billmgr_inflight(fx->bm) == 0 && s.in_progress == fx->r->nslots;
}

static void confirmed_window_refills_at_once(void **state)
{
    struct fixture *fx = *state;
    struct relay_stats s;
    settle(fx);
    assert_int_equal(store_set_lazy(fx->st, true), RT_OK);
    size_t n = fx->r->nslots + 3;
    for (int64_t t = 5; t < 5 + (int64_t)n; t++) {
        sim_task(t, 3, "window", "", "2024-05-01 10:00:00");
        assert_int_equal(store_outbox_add(fx->st, "7", t, fixture_wall_ms()), RT_OK);
    }
    relay_wake(fx->r, 0);
    fixture_run_until(fx, window_viewed, "a whole window of views");
    assert_int_equal(store_sync(fx->st), RT_OK);
    assert_int_equal(fake_broker.n, fx->r->nslots);
    for (size_t k = 0; k < fake_broker.n; k++)
        relay_on_confirm(fx->r, fake_broker.pub[k].tag, BROKER_ACKED);
    /* The pass's end: its sync frees the window and takes the rest, with
     * no tick in between. */
    assert_int_equal(store_sync(fx->st), RT_OK);
    relay_stats(fx->r, &s);
    assert_int_equal(s.confirmed, fx->r->nslots);
    assert_int_equal(s.in_progress, 3);
    assert_true(billmgr_inflight(fx->bm) > 0);
    fixture_run_until(fx, three_viewed, "the views of the three left");
    assert_int_equal(store_sync(fx->st), RT_OK);
    assert_int_equal(fake_broker.n, n);
    for (size_t k = fx->r->nslots; k < n; k++)
        relay_on_confirm(fx->r, fake_broker.pub[k].tag, BROKER_ACKED);
    assert_int_equal(store_sync(fx->st), RT_OK);
    assert_int_equal(backlog(fx), 0);
    assert_true(relay_idle(fx->r));
    assert_int_equal(store_set_lazy(fx->st, false), RT_OK);
}

static void failures_defer_with_backoff(void **state)
{
    struct fixture *fx = *state;
    struct store_event ev[4];
    size_t n;
    struct relay_stats s;
    settle(fx);

    /* A transient API failure: deferred by 1 s, attempts counted. */
    fake_bill.fail_views = 1;
    sim_task(5, 3, "x", "", "2024-05-01 10:00:00");
    add_event(fx, 5);
    fixture_run_until(fx, calls_done, "the failed view");
    assert_int_equal(fake_broker.n, 0);
    assert_int_equal(store_outbox_due(fx->st, fixture_wall_ms(), 4, ev, &n), RT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(store_outbox_due(fx->st, fixture_wall_ms() + 1100, 4, ev, &n), RT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].attempts, 1);

    /* An access error: kept for 5 minutes, never dropped. */
    fake_bill.deny_views = 1;
    add_event(fx, 5); /* a new event makes the row due at once */
    fixture_run_until(fx, calls_done, "the denied view");
    assert_int_equal(store_outbox_due(fx->st, fixture_wall_ms() + 60000, 4, ev, &n), RT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(
        store_outbox_due(fx->st, fixture_wall_ms() + RELAY_REJECT_DELAY_MS + 1000, 4, ev, &n),
        RT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].attempts, 2);
    fake_bill.deny_views = 0;

    /* Unroutable (no queue bound): deferred with the backoff of attempt 2. */
    add_event(fx, 5);
    fixture_run_until(fx, one_published, "the publish");
    relay_on_confirm(fx->r, fake_broker.pub[0].tag, BROKER_RETURNED);
    assert_int_equal(store_outbox_due(fx->st, fixture_wall_ms() + 2000, 4, ev, &n), RT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(store_outbox_due(fx->st, fixture_wall_ms() + 4100, 4, ev, &n), RT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].attempts, 3);
    relay_stats(fx->r, &s);
    assert_int_equal(s.deferred, 3);
    assert_true(relay_idle(fx->r));
}

static void lost_and_retry_publish_again_without_a_view(void **state)
{
    struct fixture *fx = *state;
    settle(fx);
    sim_task(5, 3, "x", "", "2024-05-01 10:00:00");

    /* Broker down: the message waits in memory. */
    fake_broker.connected = 0;
    add_event(fx, 5);
    fixture_run_until(fx, nothing_viewing, "the view");
    assert_int_equal(fake_broker.n, 0);
    assert_false(relay_idle(fx->r));
    fake_broker.connected = 1;
    relay_on_connected(fx->r);
    assert_int_equal(fake_broker.n, 1);

    /* Lost with the connection: the same message again once connected. */
    fake_broker.connected = 0;
    relay_on_confirm(fx->r, fake_broker.pub[0].tag, BROKER_LOST);
    assert_int_equal(fake_broker.n, 1);
    fake_broker.connected = 1;
    relay_on_connected(fx->r);
    assert_int_equal(fake_broker.n, 2);
    assert_string_equal(fake_broker.pub[1].message_id, fake_broker.pub[0].message_id);
    assert_int_equal(fake_bill_get(&fake_bill.views), 1);
    relay_on_confirm(fx->r, fake_broker.pub[1].tag, BROKER_ACKED);
    assert_int_equal(backlog(fx), 0);
    assert_true(relay_idle(fx->r));
}

/* The status of a confirmed message becomes the status the client knows
 * the target has (rev key "status", which the reverse applier compares a
 * state's status with); the rest of the rev row is kept. */
static void confirm_records_the_forwarded_status(void **state)
{
    struct fixture *fx = *state;
    struct store_rev rev;
    settle(fx);
    assert_int_equal(store_rev_put(fx->st, "7", 5, 4, 10, "status=0;performer=21;notes_len=10"),
                     RT_OK);
    sim_task(5, 3, "Set up VPS", "", "2024-05-01 10:00:00");
    pthread_mutex_lock(&fake_bill.lock);
    fake_bill.tasks[5].status = 2;
    pthread_mutex_unlock(&fake_bill.lock);
    add_event(fx, 5);
    fixture_run_until(fx, one_published, "the publish");
    assert_int_equal(fake_broker.pub[0].msg.fwd.status, 2);
    /* The last state applied before the task was read: the server keeps
     * the target's status over a message that had not seen its newest. */
    assert_int_equal(fake_broker.pub[0].msg.fwd.rev_seq, 4);

    /* Not before the broker's ack. */
    assert_int_equal(store_rev_get(fx->st, "7", 5, &rev), RT_OK);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 0);
    relay_on_confirm(fx->r, fake_broker.pub[0].tag, BROKER_ACKED);
    assert_int_equal(store_rev_get(fx->st, "7", 5, &rev), RT_OK);
    assert_true(rev.found);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);
    assert_int_equal(rev.seq, 4);
    assert_int_equal(rev.notes_applied, 10);
    assert_int_equal(fp_set_get_int(rev.applied, "performer", -1), 21);
    assert_int_equal(fp_set_get_int(rev.applied, "notes_len", -1), 10);

    /* A confirm older than the one recorded changes nothing: the newer
     * message's status counts. */
    sim_task(5, 3, "Set up VPS today", "", "2024-05-01 11:00:00");
    add_event(fx, 5);
    fixture_run_until(fx, two_published, "the publish of the change");
    assert_int_equal(fake_broker.pub[1].msg.fwd.status, 0);
    assert_int_equal(fake_broker.pub[1].msg.seq, 2);
    assert_int_equal(store_fwd_confirm(fx->st, "7", 5, 9, "newer", 1), RT_OK);
    relay_on_confirm(fx->r, fake_broker.pub[1].tag, BROKER_ACKED);
    assert_int_equal(backlog(fx), 0);
    assert_int_equal(store_rev_get(fx->st, "7", 5, &rev), RT_OK);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);
}

/* A state applied between the read of the task and the confirm is newer
 * than the message: the server keeps the target's status over it, so the
 * status that state recorded stays the one the client knows. */
static void confirm_after_a_newer_state_keeps_its_status(void **state)
{
    struct fixture *fx = *state;
    struct store_rev rev;
    settle(fx);
    assert_int_equal(store_rev_put(fx->st, "7", 5, 4, 0, "status=0"), RT_OK);
    sim_task(5, 3, "Set up VPS", "", "2024-05-01 10:00:00");
    add_event(fx, 5);
    fixture_run_until(fx, one_published, "the publish");
    assert_int_equal(fake_broker.pub[0].msg.fwd.rev_seq, 4);
    assert_int_equal(fake_broker.pub[0].msg.fwd.status, 0);
    /* The reverse applier applies state 5 (the target closed the task). */
    assert_int_equal(store_rev_put(fx->st, "7", 5, 5, 0, "status=2"), RT_OK);
    relay_on_confirm(fx->r, fake_broker.pub[0].tag, BROKER_ACKED);
    assert_int_equal(backlog(fx), 0);
    assert_int_equal(store_rev_get(fx->st, "7", 5, &rev), RT_OK);
    assert_int_equal(rev.seq, 5);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);
}

/* A task never seen by the reverse applier gets a rev row holding only the
 * status, so that the first state that shows it is not taken for a change. */
static void confirm_creates_the_rev_row(void **state)
{
    struct fixture *fx = *state;
    struct store_rev rev;
    settle(fx);
    sim_task(6, 3, "Reinstall", "", "2024-05-01 10:00:00");
    pthread_mutex_lock(&fake_bill.lock);
    fake_bill.tasks[6].status = 1;
    pthread_mutex_unlock(&fake_bill.lock);
    add_event(fx, 6);
    fixture_run_until(fx, one_published, "the publish");
    assert_int_equal(fake_broker.pub[0].msg.fwd.rev_seq, 0); /* no state applied yet */
    assert_int_equal(store_rev_get(fx->st, "7", 6, &rev), RT_OK);
    assert_false(rev.found);
    relay_on_confirm(fx->r, fake_broker.pub[0].tag, BROKER_ACKED);
    assert_int_equal(store_rev_get(fx->st, "7", 6, &rev), RT_OK);
    assert_true(rev.found);
    assert_int_equal(rev.seq, 0);
    assert_int_equal(rev.notes_applied, 0);
    assert_string_equal(rev.applied, "sseq=1;status=1");
}

/* The rev row's "sseq" is the seq of the confirmed message that last
 * changed the status forwarded (consumer/reverse.c: a state that missed
 * only messages forwarding the same status is not stale). */
static void status_seq_marks_the_last_status_change(void **state)
{
    struct fixture *fx = *state;
    struct store_rev rev;
    settle(fx);
    sim_task(6, 3, "Reinstall", "", "2024-05-01 10:00:00");
    add_event(fx, 6);
    fixture_run_until(fx, one_published, "the first publish");
    relay_on_confirm(fx->r, fake_broker.pub[0].tag, BROKER_ACKED);
    assert_int_equal(store_rev_get(fx->st, "7", 6, &rev), RT_OK);
    assert_int_equal(fp_set_get_int(rev.applied, "sseq", -1), 1);

    /* A rename forwards the same status: the seq stays. */
    sim_task(6, 3, "Reinstall Debian", "", "2024-05-01 10:00:01");
    add_event(fx, 6);
    fixture_run_until(fx, two_published, "the rename");
    relay_on_confirm(fx->r, fake_broker.pub[1].tag, BROKER_ACKED);
    assert_int_equal(store_rev_get(fx->st, "7", 6, &rev), RT_OK);
    assert_int_equal(fp_set_get_int(rev.applied, "sseq", -1), 1);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 0);

    /* Closed on the source: this message changes it. */
    pthread_mutex_lock(&fake_bill.lock);
    fake_bill.tasks[6].status = 2;
    snprintf(fake_bill.tasks[6].updated, sizeof fake_bill.tasks[6].updated, "2024-05-01 10:00:02");
    pthread_mutex_unlock(&fake_bill.lock);
    add_event(fx, 6);
    fixture_run_until(fx, three_published, "the close");
    assert_int_equal(fake_broker.pub[2].msg.seq, 3);
    relay_on_confirm(fx->r, fake_broker.pub[2].tag, BROKER_ACKED);
    assert_int_equal(store_rev_get(fx->st, "7", 6, &rev), RT_OK);
    assert_int_equal(fp_set_get_int(rev.applied, "sseq", -1), 3);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);
}

/* Issue 13: the wall clock set back an hour. An outbox row deferred by a
 * second just before (its due time is stored, on the wall clock that was
 * an hour ahead) is still published a second later, not an hour later. */
static void wall_clock_set_back_keeps_deferred_rows_on_time(void **state)
{
    struct fixture *fx = *state;
    struct store_event ev[4];
    size_t n;
    settle(fx);
    sim_task(5, 3, "x", "", "2024-05-01 10:00:00");
    assert_int_equal(store_outbox_add(fx->st, "7", 5, fixture_wall_ms()), RT_OK);
    /* Deferred when the wall clock read an hour later than it does now,
     * and the relay's last tick saw that clock. */
    assert_int_equal(
        store_outbox_defer(fx->st, "7", 5, fixture_wall_ms() + 3600 * 1000 + 1000, "view failed"),
        RT_OK);
    fx->r->wall_skew += 3600 * 1000;
    relay_tick(fx->r, clock_mono_ms());
    assert_int_equal(store_outbox_due(fx->st, fixture_wall_ms() + 2000, 4, ev, &n), RT_OK);
    assert_int_equal(n, 1);
    fixture_run_until(fx, one_published, "the row deferred before the clock went back");
    assert_int_equal(fake_broker.pub[0].msg.task, 5);

    /* A row deferred ten days ahead (a clock that was ahead before a
     * restart): a new relay's first tick brings it within the longest
     * deferral it ever makes. */
    assert_int_equal(store_outbox_add(fx->st, "7", 6, fixture_wall_ms()), RT_OK);
    assert_int_equal(
        store_outbox_defer(fx->st, "7", 6, fixture_wall_ms() + 10LL * 86400 * 1000, "x"), RT_OK);
    char err[128];
    struct relay *r2 =
        relay_new(fx->cfg, fx->st, fx->bm, (struct broker *)&fx->fake_br, err, sizeof err);
    assert_non_null(r2);
    fake_broker.connected = 0; /* nothing to publish: only the schedule */
    relay_tick(r2, clock_mono_ms());
    relay_drain(r2);
    billmgr_free(fx->bm); /* cancels r2's calls before it goes */
    relay_free(r2);
    struct billmgr_opts o;
    config_opts_billmgr(fx->cfg, &o);
    fx->bm = billmgr_new(&o, err, sizeof err);
    assert_non_null(fx->bm);
    fx->r->bm = fx->bm;
    assert_int_equal(
        store_outbox_due(fx->st, fixture_wall_ms() + RELAY_BACKOFF_MAX_MS + 1000, 4, ev, &n),
        RT_OK);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        found |= ev[i].task == 6;
    assert_true(found);
}

/* Schedules run on the clock the ticks are given, the monotonic one: the
 * next reconciliation is due poll_interval after the last ended on that
 * clock, whatever the wall clock says. */
static void ticks_on_the_monotonic_clock(void **state)
{
    struct fixture *fx = *state;
    struct relay_stats s;
    settle(fx);
    int64_t now = clock_mono_ms();
    int lists = fake_bill_get(&fake_bill.lists);
    int64_t next = relay_tick(fx->r, now);
    assert_true(next > now && next <= now + RELAY_SCAN_INTERVAL_MS);
    assert_int_equal(fake_bill_get(&fake_bill.lists),
                     lists); /* not yet: poll_interval is an hour */
    relay_tick(fx->r, now + 3600 * 1000 + 1000);
    relay_stats(fx->r, &s);
    assert_true(s.reconciling);
    fixture_run_until(fx, calls_done, "the second reconciliation");
    assert_true(fake_bill_get(&fake_bill.lists) > lists);
}

/* Issue 9, case 7: the store held by another process when a confirm
 * arrives. The confirmed message is kept (never published again for it)
 * and committed once the store works; the cause is logged once, not once
 * per try. */
static void held_store_keeps_a_confirmed_message(struct fixture *fx)
{
    char err[256];
    sim_task(5, 3, "x", "", "2024-05-01 10:00:00");
    add_event(fx, 5);
    fixture_run_until(fx, one_published, "the publish");
    struct store *other = store_open(fx->cfg->state_dir, err, sizeof err);
    assert_non_null(other);
    assert_int_equal(store_begin(other), RT_OK);
    relay_on_confirm(fx->r, fake_broker.pub[0].tag, BROKER_ACKED);
    int64_t now = clock_mono_ms();
    for (int i = 1; i <= 4; i++)
        relay_tick(fx->r, now + i * RELAY_STORE_RETRY_MAX_MS);
    assert_int_equal(backlog(fx), 1);
    assert_false(relay_idle(fx->r));
    assert_int_equal(store_rollback(other), RT_OK);
    store_free(other);
    relay_tick(fx->r, now + 10 * RELAY_STORE_RETRY_MAX_MS);
}

static void held_store_loses_nothing(void **state)
{
    struct fixture *fx = *state;
    struct relay_stats s;
    settle(fx);
    log_set_level(LOG_LEVEL_INFO);
    int lines =
        count_log_lines(fx, held_store_keeps_a_confirmed_message, "cannot record a confirmed");
    log_set_level(LOG_LEVEL_ERROR);
    assert_int_equal(lines, 1);
    assert_int_equal(backlog(fx), 0);
    assert_int_equal(fake_broker.n, 1);
    relay_stats(fx->r, &s);
    assert_int_equal(s.confirmed, 1);
    assert_true(relay_idle(fx->r));
}

static void event_during_publish_is_published_again(void **state)
{
    struct fixture *fx = *state;
    settle(fx);
    sim_task(5, 3, "first", "", "2024-05-01 10:00:00");
    add_event(fx, 5);
    fixture_run_until(fx, one_published, "the publish");
    /* A new event while the message awaits its confirm: the task is not
     * taken twice, and the row survives the ack (its gen changed). */
    sim_task(5, 3, "second", "", "2024-05-01 10:00:01");
    add_event(fx, 5);
    assert_int_equal(fake_bill_get(&fake_bill.views), 1);
    relay_on_confirm(fx->r, fake_broker.pub[0].tag, BROKER_ACKED);
    assert_int_equal(backlog(fx), 1);
    fixture_run_until(fx, two_published, "the second publish");
    assert_string_equal(fake_broker.pub[1].msg.fwd.name, "second");
    assert_int_equal(fake_broker.pub[1].msg.seq, 2);
    relay_on_confirm(fx->r, fake_broker.pub[1].tag, BROKER_ACKED);
    assert_int_equal(backlog(fx), 0);
}

static void reconciliation_pages_and_skips_seen_tasks(void **state)
{
    struct fixture *fx = *state;
    struct relay_stats s;
    settle(fx);
    int lists_before = fake_bill_get(&fake_bill.lists);

    /* Three tasks in department 3 (pages of 2), one in 8, one elsewhere. */
    sim_task(1, 3, "a", "", "2024-05-01 10:00:01");
    sim_task(2, 3, "b", "", "2024-05-01 10:00:02");
    sim_task(3, 3, "c", "", "2024-05-01 10:00:03");
    sim_task(4, 8, "d", "", "2024-05-01 10:00:04");
    sim_task(6, 5, "e", "", "2024-05-01 10:00:06");
    /* Task 2 was seen at this very `updated`: skipped. */
    assert_int_equal(store_fwd_seen(fx->st, "7", 2, "2024-05-01 10:00:02"), RT_OK);
    /* Task 3 was seen at an older one: enqueued. */
    assert_int_equal(store_fwd_seen(fx->st, "7", 3, "2024-04-01 00:00:00"), RT_OK);

    fake_broker.connected = 0; /* keep the rows in the outbox to inspect them */
    relay_wake(fx->r, 1);
    fixture_run_until(fx, recon_done_once, "the reconciliation");
    relay_stats(fx->r, &s);
    assert_int_equal(s.reconciliations, 2);
    assert_int_equal(s.reconcile_enqueued, 3);
    /* Department 3: pages 1 and 2; department 8: page 1. */
    assert_int_equal(fake_bill_get(&fake_bill.lists) - lists_before, 3);
    assert_int_equal(backlog(fx), 3);
    /* The rows flow through the normal path. */
    fake_broker.connected = 1;
    relay_on_connected(fx->r);
    fixture_run_until(fx, nothing_viewing, "the views");
    relay_on_connected(fx->r);
    assert_int_equal(fake_broker.n, 3);
}

static void drain_lets_go_and_free_is_safe_in_flight(void **state)
{
    struct fixture *fx = *state;
    settle(fx);
    sim_task(5, 3, "x", "", "2024-05-01 10:00:00");
    fake_broker.connected = 0;
    add_event(fx, 5);
    fixture_run_until(fx, nothing_viewing, "the view");
    assert_false(relay_idle(fx->r));
    relay_drain(fx->r);
    assert_true(relay_idle(fx->r));
    fake_broker.connected = 1;
    relay_on_connected(fx->r);
    assert_int_equal(fake_broker.n, 0); /* no new publishes while draining */
    assert_int_equal(backlog(fx), 1);   /* the row waits for the next start */

    /* Calls in flight at teardown: billmgr_free (in teardown) cancels
     * them first, then relay_free; the sanitizers watch for leaks. */
    char err[128];
    struct relay *r2 =
        relay_new(fx->cfg, fx->st, fx->bm, (struct broker *)&fx->fake_br, err, sizeof err);
    assert_non_null(r2);
    relay_tick(r2, clock_mono_ms());
    assert_true(billmgr_inflight(fx->bm) > 0);
    assert_false(relay_idle(r2));
    relay_free(fx->r);
    fx->r = r2;
}

static void new_refuses_a_config_without_client(void **state)
{
    struct fixture *fx = *state;
    char err[128] = "";
    fx->cfg->client.enabled = false;
    assert_null(relay_new(fx->cfg, fx->st, fx->bm, (struct broker *)&fx->fake_br, err, sizeof err));
    assert_non_null(strstr(err, "client"));
    fx->cfg->client.enabled = true;
    relay_free(NULL);
}

/* Fault case 6 (fields_arrays): a forwarded field that is not text is
 * never read as empty (a name, type or deadline cleared on the target, a
 * closed target reopened by status 0) nor a department present but
 * unreadable as "not mapped" (the event dropped): it is a code of its own
 * naming the field. */
static void fields_that_are_not_text_are_refused(void **state)
{
    struct fixture *fx = *state;
    struct relay_fields f;
    struct fake_task t = {.exists = 1, .id = 4, .department = 3, .item = 42, .status = 2};
    snprintf(t.name, sizeof t.name, "Disk");
    snprintf(t.note, sizeof t.note, "mine");
    snprintf(t.updated, sizeof t.updated, "2024-01-02 03:04:05");
    const char *fields[] = {"dept", "subject", "type", "note", "state", "item", "client"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        json_t *view = task_doc(&t);
        json_t *doc = fake_doc_arrays(view, fields[i]);
        json_decref(view);
        assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &f), RELAY_FIELDS_UNREADABLE);
        char want[64];
        snprintf(want, sizeof want, "its field %s is not text", fields[i]);
        assert_string_equal(f.unreadable, want);
        relay_fields_release(&f);
        json_decref(doc);
    }
    /* A deadline, which task_doc leaves out (none): the same. */
    json_t *doc = task_doc(&t);
    json_object_set_new(doc, "deadline", json_pack("[{s:s}]", "$", "2030-01-01 00:00:00"));
    assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &f), RELAY_FIELDS_UNREADABLE);
    assert_string_equal(f.unreadable, "its field deadline is not text");
    relay_fields_release(&f);
    /* A department that is text but no id is not "not mapped" either. */
    json_decref(doc);
    doc = task_doc(&t);
    fake_doc_text(doc, "dept", "Support");
    assert_int_equal(relay_fields_from_doc(fx->cfg, doc, &f), RELAY_FIELDS_UNREADABLE);
    assert_string_equal(f.unreadable, "its field dept \"Support\" is not a department id");
    relay_fields_release(&f);
    json_decref(doc);
}

static void view_task_5(struct fixture *fx)
{
    add_event(fx, 5);
    fixture_run_until(fx, calls_done, "the view");
}

/* Fault case 6: a view that cannot be read (a forwarded field that is not
 * text; the view of another task; a document holding nothing) defers the
 * row with a warning naming what was wrong: nothing is published, nothing
 * dropped, and the task goes out once the API answers well. */
static void unreadable_view_defers_the_row(void **state)
{
    struct fixture *fx = *state;
    struct relay_stats s;
    struct store_event ev[4];
    size_t n;
    settle(fx);
    sim_task(5, 3, "Set up VPS", "please\n", "2024-05-01 10:00:00");
    const struct {
        const char *arrays;
        int other, empty;
        const char *line;
    } views[] = {
        {"dept", 0, 0, "its field dept is not text"},
        {"subject", 0, 0, "its field subject is not text"},
        {"state", 0, 0, "its field state is not text"},
        {"*", 0, 0, "the view holds an id that is not text"},
        {"", 1, 0, "the view answers for task \"999\""},
        {"", 0, 1, "the view names no task"},
    };
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++) {
        pthread_mutex_lock(&fake_bill.lock);
        snprintf(fake_bill.view_arrays, sizeof fake_bill.view_arrays, "%s", views[i].arrays);
        fake_bill.view_other = views[i].other;
        fake_bill.view_empty = views[i].empty;
        pthread_mutex_unlock(&fake_bill.lock);
        log_set_level(LOG_LEVEL_WARNING);
        int lines = count_log_lines(fx, view_task_5, views[i].line);
        log_set_level(LOG_LEVEL_ERROR);
        assert_int_equal(lines, 1);
        assert_int_equal(fake_broker.n, 0);
        assert_int_equal(backlog(fx), 1);
        relay_stats(fx->r, &s);
        assert_int_equal(s.dropped, 0);
        assert_int_equal(s.deferred, i + 1);
        /* Deferred with the backoff of a failure for now. */
        assert_int_equal(store_outbox_due(fx->st, fixture_wall_ms(), 4, ev, &n), RT_OK);
        assert_int_equal(n, 0);
        assert_int_equal(
            store_outbox_due(fx->st, fixture_wall_ms() + RELAY_BACKOFF_MAX_MS + 1000, 4, ev, &n),
            RT_OK);
        assert_int_equal(n, 1);
    }

    pthread_mutex_lock(&fake_bill.lock);
    fake_bill.view_arrays[0] = '\0';
    fake_bill.view_other = fake_bill.view_empty = 0;
    pthread_mutex_unlock(&fake_bill.lock);
    add_event(fx, 5);
    fixture_run_until(fx, one_published, "the publish");
    assert_string_equal(fake_broker.pub[0].msg.fwd.name, "Set up VPS");
    assert_int_equal(fake_broker.pub[0].msg.fwd.department, 12);
}

static uint64_t recon_want;

/* recon_want reconciliations ended, done or failed, and none runs. */
static int recon_ended(struct fixture *fx)
{
    struct relay_stats s;
    relay_stats(fx->r, &s);
    return s.reconciliations + s.reconcile_failed >= recon_want && !s.reconciling;
}

/* Runs one more reconciliation to its end. */
static void reconcile_now(struct fixture *fx)
{
    struct relay_stats s;
    relay_stats(fx->r, &s);
    recon_want = s.reconciliations + s.reconcile_failed + 1;
    relay_wake(fx->r, 1);
    fixture_run_until(fx, recon_ended, "the reconciliation");
}

/* Fault case 6: a list row whose id is not text could be a task whose
 * event was missed: the reconciliation stops, says so, and counts as
 * failed (the next one is due at poll_interval) rather than skip it. */
static void reconciliation_stops_at_an_unreadable_row(void **state)
{
    struct fixture *fx = *state;
    struct relay_stats s;
    settle(fx);
    sim_task(1, 3, "a", "", "2024-05-01 10:00:01");
    sim_task(2, 3, "b", "", "2024-05-01 10:00:02");
    fake_broker.connected = 0; /* keep the rows in the outbox to count them */
    fake_bill.list_arrays = 1;
    log_set_level(LOG_LEVEL_WARNING);
    int lines = count_log_lines(fx, reconcile_now,
                                "reconciliation stopped: the list of department 3 (page 1) has a "
                                "row whose id is not text");
    log_set_level(LOG_LEVEL_ERROR);
    assert_int_equal(lines, 1);
    relay_stats(fx->r, &s);
    assert_int_equal(s.reconcile_failed, 1);
    assert_int_equal(s.reconciliations, 1); /* the start-up one only */
    assert_int_equal(s.reconcile_enqueued, 0);
    assert_int_equal(backlog(fx), 0);

    fake_bill.list_arrays = 0;
    reconcile_now(fx);
    relay_stats(fx->r, &s);
    assert_int_equal(s.reconciliations, 2);
    assert_int_equal(s.reconcile_enqueued, 2);
    assert_int_equal(backlog(fx), 2);
}

int main(void)
{
    log_init("test_relay", LOG_LEVEL_ERROR, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(backoff_doubles_and_caps),
        cmocka_unit_test(reconcile_decision),
        cmocka_unit_test_setup_teardown(fields_read_with_configured_names, setup, teardown),
        cmocka_unit_test_setup_teardown(group_commits_hold_and_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(confirmed_window_refills_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(publishes_then_commits_on_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(gone_and_unmapped_are_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(missing_view_function_is_not_a_deleted_task, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(failures_defer_with_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(lost_and_retry_publish_again_without_a_view, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(confirm_records_the_forwarded_status, setup, teardown),
        cmocka_unit_test_setup_teardown(confirm_after_a_newer_state_keeps_its_status, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(confirm_creates_the_rev_row, setup, teardown),
        cmocka_unit_test_setup_teardown(status_seq_marks_the_last_status_change, setup, teardown),
        cmocka_unit_test_setup_teardown(wall_clock_set_back_keeps_deferred_rows_on_time, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(ticks_on_the_monotonic_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(held_store_loses_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(event_during_publish_is_published_again, setup, teardown),
        cmocka_unit_test_setup_teardown(reconciliation_pages_and_skips_seen_tasks, setup, teardown),
        cmocka_unit_test_setup_teardown(drain_lets_go_and_free_is_safe_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(new_refuses_a_config_without_client, setup, teardown),
        cmocka_unit_test_setup_teardown(fields_that_are_not_text_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(unreadable_view_defers_the_row, setup, teardown),
        cmocka_unit_test_setup_teardown(reconciliation_stops_at_an_unreadable_row, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
