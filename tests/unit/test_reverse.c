/* Unit tests of consumer/reverse: the pure helpers (validation, the plan of
 * a state against the applied fp set, the performer mapping, the block
 * text), and the applier driven in-process: a state applied with one view
 * and one edit against a loopback BILLmanager stand-in, duplicates and
 * unchanged states costing no call, and a sync_done answered only after
 * the state delivered before it.
 *
 * Unit test programs link rtconfig and rtcommon only, so the applier's
 * sources (reverse*.c and the delivery slots they run on, applier*.c) are
 * compiled into this program. The broker is never connected: acks then
 * fail quietly (the messages would be redelivered), which changes nothing
 * of what the applier does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <poll.h>
#include <pthread.h>

#include <cmocka.h>

#include "../../consumer/applier.c"
#include "../../consumer/applier_ack.c"
#include "../../consumer/applier_copy.c"
#include "../../consumer/applier_order.c"
#include "../../consumer/applier_pend.c"
#include "../../consumer/applier_view.c"
#include "../../consumer/reverse.c"
#include "../../consumer/reverse_apply.c"
#include "../../consumer/reverse_plan.c"
#include "../../consumer/reverse_sync.c"

#include "http_stub.h"

static struct config_performer_map test_performers[] = {
    {.remote = 21, .local = 1},
    {.remote = 22, .local = 2},
};

static struct config test_cfg_storage;

static struct config *test_config(void)
{
    struct config *cfg = &test_cfg_storage;
    struct config_billmgr_api *api = &cfg->billmanager.api;
    memset(cfg, 0, sizeof(*cfg));
    cfg->client.enabled = true;
    cfg->client.id = "7";
    cfg->client.server_user = "upstream";
    cfg->client.performers = test_performers;
    cfg->client.n_performers = 2;
    cfg->amqp.user = "reseller-a";
    cfg->amqp.prefetch = 4;
    api->func_task = "task";
    api->func_task_edit = "task.edit";
    api->field_note = "note";
    api->field_status = "status";
    api->field_performer = "performer";
    api->page_size = 1000;
    return cfg;
}

/* A state message with borrowed strings (never released). */
static char *test_notes[2];

static void test_state(struct codec_msg *m, int64_t task, uint64_t seq, int status,
                       int64_t performer_id, const char *performer, const char *native)
{
    codec_msg_init(m, CODEC_STATE);
    m->client = "7";
    m->task = task;
    m->seq = seq;
    m->state.status = status;
    m->state.performer_id = performer_id;
    m->state.performer = (char *)performer;
    test_notes[0] = (char *)native;
    m->state.notes = test_notes;
    m->state.nnotes = native && *native ? 1 : 0;
}

/* ---- validation -------------------------------------------------------- */

static void check_accepts_states_and_sync_done_of_the_server(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    char reason[256];
    (void)state;
    test_state(&m, 5, 1, 1, 0, "", "");
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "upstream", "reseller-a", NULL, &m,
                                   reason, sizeof(reason)),
                     REVERSE_DEAD_NONE);
    assert_string_equal(reason, "");

    codec_msg_init(&m, CODEC_SYNC_DONE);
    m.client = "7";
    m.sync.id = "abc";
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "upstream", "reseller-a", NULL, &m,
                                   reason, sizeof(reason)),
                     REVERSE_DEAD_NONE);
}

static void check_refuses_other_queues_kinds_clients_and_users(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    char reason[256];
    (void)state;
    test_state(&m, 5, 1, 1, 0, "", "");

    assert_int_equal(reverse_check(cfg, "remotetask.reverse.8", "upstream", "reseller-a", NULL, &m,
                                   reason, sizeof(reason)),
                     REVERSE_DEAD_UNAUTHORIZED);
    assert_non_null(strstr(reason, "remotetask.reverse.8"));

    m.client = "8";
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "upstream", "reseller-a", NULL, &m,
                                   reason, sizeof(reason)),
                     REVERSE_DEAD_UNAUTHORIZED);
    assert_non_null(strstr(reason, "\"8\""));
    m.client = "7";

    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "intruder", "reseller-a", NULL, &m,
                                   reason, sizeof(reason)),
                     REVERSE_DEAD_UNAUTHORIZED);
    assert_non_null(strstr(reason, "intruder"));

    m.kind = CODEC_TASK;
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "upstream", "reseller-a", NULL, &m,
                                   reason, sizeof(reason)),
                     REVERSE_DEAD_UNDECODABLE);
    assert_non_null(strstr(reason, "task"));
    m.kind = CODEC_SYNC;
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "upstream", "reseller-a", NULL, &m,
                                   reason, sizeof(reason)),
                     REVERSE_DEAD_UNDECODABLE);
}

static void check_takes_the_sender_of_our_own_retry_copy(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    char reason[256];
    (void)state;
    test_state(&m, 5, 1, 1, 0, "", "");

    /* Our own login with the server's user in x-rt-user: our retry copy. */
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "reseller-a", "reseller-a",
                                   "upstream", &m, reason, sizeof(reason)),
                     REVERSE_DEAD_NONE);
    /* Our own login without it is not the server. */
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "reseller-a", "reseller-a", NULL,
                                   &m, reason, sizeof(reason)),
                     REVERSE_DEAD_UNAUTHORIZED);
    /* x-rt-user counts only on a message carrying our own login. */
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "intruder", "reseller-a",
                                   "upstream", &m, reason, sizeof(reason)),
                     REVERSE_DEAD_UNAUTHORIZED);
    /* Another client's user claiming the server's login in x-rt-user
     * (through the retry exchange, say): its own user counts. */
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "reseller-b", "reseller-a",
                                   "upstream", &m, reason, sizeof(reason)),
                     REVERSE_DEAD_UNAUTHORIZED);
    assert_string_equal(reason, "user_id \"reseller-b\" is not the AMQP user of the server side");
    /* No server_user configured (the configuration requires one): no
     * sender is trusted, rather than every one. */
    cfg->client.server_user = "";
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "anyone", "reseller-a", NULL, &m,
                                   reason, sizeof(reason)),
                     REVERSE_DEAD_UNAUTHORIZED);
    assert_int_equal(reverse_check(cfg, "remotetask.reverse.7", "", "reseller-a", NULL, &m, reason,
                                   sizeof(reason)),
                     REVERSE_DEAD_UNAUTHORIZED);
}

static void performers_map_remote_to_local(void **state)
{
    struct config *cfg = test_config();
    (void)state;
    assert_int_equal(reverse_performer_local(cfg, 21), 1);
    assert_int_equal(reverse_performer_local(cfg, 22), 2);
    assert_int_equal(reverse_performer_local(cfg, 23), 0);
    assert_int_equal(reverse_performer_local(cfg, 0), 0);
    cfg->client.n_performers = 0;
    assert_int_equal(reverse_performer_local(cfg, 21), 0);
}

static void dead_kinds_have_names(void **state)
{
    (void)state;
    assert_string_equal(reverse_dead_kind_name(REVERSE_DEAD_NONE), "none");
    assert_string_equal(reverse_dead_kind_name(REVERSE_DEAD_UNDECODABLE), "undecodable");
    assert_string_equal(reverse_dead_kind_name(REVERSE_DEAD_UNAUTHORIZED), "unauthorized");
    assert_string_equal(reverse_dead_kind_name(REVERSE_DEAD_UNKNOWN_TASK), "unknown_task");
    assert_string_equal(reverse_dead_kind_name(REVERSE_DEAD_API), "api");
}

/* ---- plans ------------------------------------------------------------- */

static void first_state_is_verified_against_the_task(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p;
    (void)state;

    /* No known status (a task forwarded before the relay recorded one):
     * the first state cannot tell an echo from a change, so its status is
     * only recorded, whatever it is. */
    test_state(&m, 5, 1, 2, 0, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, "", 0, &p), 0);
    assert_false(p.status);
    assert_false(p.stale);
    assert_true(p.verify);
    assert_false(p.performer);
    assert_null(p.block);
    assert_true(reverse_plan_empty(&p));
    assert_false(reverse_plan_needs_view(&p));
    assert_int_equal(fp_set_get_int(p.applied, "status", -1), 2);
    reverse_plan_release(&p);

    /* The same with a fwd_seq: still only the baseline. */
    test_state(&m, 5, 1, 1, 0, "", "");
    m.state.fwd_seq = 3;
    assert_int_equal(reverse_plan_make(cfg, &m, "", 3, &p), 0);
    assert_false(p.status);
    assert_int_equal(fp_set_get_int(p.applied, "status", -1), 1);
    reverse_plan_release(&p);

    /* A mapped performer on the first state is compared with the task. */
    test_state(&m, 5, 1, 0, 21, "Ann Smith", "");
    assert_int_equal(reverse_plan_make(cfg, &m, "status=0", 0, &p), 0);
    assert_true(p.verify);
    assert_true(p.performer);
    assert_true(reverse_plan_needs_view(&p));
    reverse_plan_verify(&p, 0, 1);
    assert_false(p.performer);
    assert_false(p.verify);
    assert_true(reverse_plan_empty(&p));
    reverse_plan_release(&p);
}

/* The defect of it_forward test_client_stop: the source task is closed
 * while the client is down and forwarded when it starts; a state the
 * server read before it applied that message still says "open". */
static void stale_state_never_reverts_a_forwarded_status(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p;
    (void)state;

    /* The relay confirmed seq 2 (status 2, closed); the state had seen
     * seq 1 only and shows the target still open. */
    test_state(&m, 5, 1, 0, 0, "", "");
    m.state.fwd_seq = 1;
    assert_int_equal(reverse_plan_make(cfg, &m, "status=2", 2, &p), 0);
    assert_true(p.stale);
    assert_false(p.status);
    assert_true(reverse_plan_empty(&p));
    /* The known status stays the forwarded one. */
    assert_int_equal(fp_set_get_int(p.applied, "status", -1), 2);
    reverse_plan_release(&p);

    /* Stale with no known status: nothing is recorded either. */
    assert_int_equal(reverse_plan_make(cfg, &m, "", 2, &p), 0);
    assert_true(p.stale);
    assert_false(p.status);
    assert_int_equal(fp_set_get_int(p.applied, "status", -1), -1);
    reverse_plan_release(&p);

    /* Once the server applied seq 2 the target is closed too: the state
     * that says so is not a change. */
    test_state(&m, 5, 2, 2, 0, "", "");
    m.state.fwd_seq = 2;
    assert_int_equal(reverse_plan_make(cfg, &m, "status=2", 2, &p), 0);
    assert_false(p.stale);
    assert_false(p.status);
    assert_true(reverse_plan_empty(&p));
    reverse_plan_release(&p);

    /* Newer than what the client confirmed (its next message is still
     * unconfirmed): fresh. */
    test_state(&m, 5, 3, 2, 0, "", "");
    m.state.fwd_seq = 3;
    assert_int_equal(reverse_plan_make(cfg, &m, "status=2", 2, &p), 0);
    assert_false(p.stale);
    assert_false(p.status);
    reverse_plan_release(&p);
}

/* Issue 9, case 10: the last task message the client confirmed (seq 2, a
 * rename) was dead-lettered by the server, so every state of the task
 * carries fwd_seq 1. It forwarded the status the target was known to have
 * ("sseq" stays 1, the relay's record of the message that last changed
 * the status forwarded): a state that missed it cannot undo a status
 * change of the source, and the target's own change goes through at once.
 * A missed message that did change the status keeps the state stale. */
static void state_missing_only_a_rename_is_not_stale(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p;
    (void)state;

    test_state(&m, 5, 4, 1, 0, "", "");
    m.state.fwd_seq = 1;
    assert_int_equal(reverse_plan_make(cfg, &m, "status=0;sseq=1", 2, &p), 0);
    assert_false(p.stale);
    assert_true(p.status);
    assert_int_equal(p.status_value, 1);
    assert_int_equal(fp_set_get_int(p.applied, "status", -1), 1);
    assert_int_equal(fp_set_get_int(p.applied, "sseq", -1), 1); /* the relay's, kept */
    reverse_plan_release(&p);

    /* Seq 2 closed the task on the source: a state that missed it would
     * reopen the source. */
    assert_int_equal(reverse_plan_make(cfg, &m, "status=2;sseq=2", 2, &p), 0);
    assert_true(p.stale);
    assert_false(p.status);
    assert_int_equal(fp_set_get_int(p.applied, "status", -1), 2);
    reverse_plan_release(&p);

    /* A row the relay wrote before it kept "sseq": the last confirmed
     * message counts, as before. */
    assert_int_equal(reverse_plan_make(cfg, &m, "status=0", 2, &p), 0);
    assert_true(p.stale);
    reverse_plan_release(&p);
}

/* The state's status equals the one the client knows the target has: an
 * echo of the client's own forward, never written. */
static void equal_status_is_not_written(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p;
    (void)state;

    for (int st = 0; st <= 2; st++) {
        char applied[32];
        snprintf(applied, sizeof(applied), "status=%d", st);
        test_state(&m, 5, 4, st, 0, "", "");
        m.state.fwd_seq = 7;
        assert_int_equal(reverse_plan_make(cfg, &m, applied, 7, &p), 0);
        assert_false(p.status);
        assert_true(reverse_plan_empty(&p));
        assert_int_equal(fp_set_get_int(p.applied, "status", -1), st);
        reverse_plan_release(&p);
    }
}

/* Target staff changed the status after the server applied every task
 * message the client sent: the source takes it. */
static void target_change_is_applied(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p, q;
    (void)state;

    test_state(&m, 5, 4, 2, 0, "", "");
    m.state.fwd_seq = 7;
    assert_int_equal(reverse_plan_make(cfg, &m, "status=0", 7, &p), 0);
    assert_false(p.stale);
    assert_true(p.status);
    assert_int_equal(p.status_value, 2);
    assert_int_equal(fp_set_get_int(p.applied, "status", -1), 2);
    /* The relay's key alone is not a first state for the status: no view
     * is needed to write it. */
    assert_false(reverse_plan_needs_view(&p));

    /* The same state again: applied already. */
    assert_int_equal(reverse_plan_make(cfg, &m, p.applied, 7, &q), 0);
    assert_true(reverse_plan_empty(&q));
    reverse_plan_release(&q);
    reverse_plan_release(&p);

    /* A server that does not send fwd_seq: the known status alone. */
    test_state(&m, 5, 5, 1, 0, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, "status=0;performer=0", 9, &p), 0);
    assert_false(p.stale);
    assert_true(p.status);
    assert_int_equal(p.status_value, 1);
    reverse_plan_release(&p);
}

static void status_follows_what_was_applied(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p, q;
    (void)state;

    test_state(&m, 5, 1, 1, 0, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, "", 0, &p), 0);
    assert_false(p.status); /* the baseline */
    /* Applied: the same state again changes nothing and needs no view. */
    assert_int_equal(reverse_plan_make(cfg, &m, p.applied, 0, &q), 0);
    assert_true(reverse_plan_empty(&q));
    assert_false(q.verify);
    assert_false(reverse_plan_needs_view(&q));
    assert_string_equal(q.applied, p.applied);
    reverse_plan_release(&q);

    /* A new status alone: an edit without a view. */
    test_state(&m, 5, 2, 2, 0, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, p.applied, 0, &q), 0);
    assert_true(q.status);
    assert_int_equal(q.status_value, 2);
    assert_false(q.performer);
    assert_null(q.block);
    assert_false(reverse_plan_needs_view(&q));
    assert_false(reverse_plan_empty(&q));
    reverse_plan_release(&q);
    reverse_plan_release(&p);
}

static void mapped_performer_is_set_and_cleared(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p, q, r;
    (void)state;

    test_state(&m, 5, 1, 1, 0, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, "", 0, &p), 0);

    test_state(&m, 5, 2, 1, 21, "Ann Smith", "");
    assert_int_equal(reverse_plan_make(cfg, &m, p.applied, 0, &q), 0);
    assert_true(q.performer);
    assert_int_equal(q.performer_local, 1);
    assert_null(q.block); /* mapped: nothing in the note */
    assert_false(q.status);
    assert_int_equal(fp_set_get_int(q.applied, "plocal", 0), 1);

    /* Another remote staff member mapped to another local one. */
    test_state(&m, 5, 3, 1, 22, "Bob", "");
    assert_int_equal(reverse_plan_make(cfg, &m, q.applied, 0, &r), 0);
    assert_true(r.performer);
    assert_int_equal(r.performer_local, 2);
    reverse_plan_release(&r);

    /* Nobody on the remote side: the one we set is cleared. */
    test_state(&m, 5, 3, 1, 0, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, q.applied, 0, &r), 0);
    assert_true(r.performer);
    assert_int_equal(r.performer_local, 0);
    assert_null(r.block);
    assert_int_equal(fp_set_get_int(r.applied, "plocal", -1), 0);
    reverse_plan_release(&r);

    /* The same performer again: nothing. */
    test_state(&m, 5, 3, 1, 21, "Ann Smith", "");
    assert_int_equal(reverse_plan_make(cfg, &m, q.applied, 0, &r), 0);
    assert_true(reverse_plan_empty(&r));
    reverse_plan_release(&r);

    /* Viewed with that performer already: nothing written. */
    test_state(&m, 5, 1, 1, 21, "Ann Smith", "");
    assert_int_equal(reverse_plan_make(cfg, &m, "", 0, &r), 0);
    assert_true(r.performer);
    assert_true(reverse_plan_needs_view(&r));
    reverse_plan_verify(&r, 1, 1);
    assert_true(reverse_plan_empty(&r));
    reverse_plan_release(&r);

    reverse_plan_release(&q);
    reverse_plan_release(&p);
}

static void unmapped_performer_is_named_in_the_note(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p, q, r;
    (void)state;

    test_state(&m, 5, 1, 1, 0, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, "", 0, &p), 0);
    assert_null(p.block); /* no performer from the start: no line */

    test_state(&m, 5, 2, 1, 40, "Carol\nJones", "");
    assert_int_equal(reverse_plan_make(cfg, &m, p.applied, 0, &q), 0);
    assert_false(q.performer); /* never guessed */
    assert_non_null(q.block);
    assert_string_equal(q.block, "Performer on the remote side: Carol Jones\n");
    assert_true(reverse_plan_needs_view(&q));

    test_state(&m, 5, 3, 1, 0, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, q.applied, 0, &r), 0);
    assert_false(r.performer);
    assert_non_null(r.block);
    assert_string_equal(r.block, "No performer on the remote side\n");
    reverse_plan_release(&r);

    /* A nameless one is named by id. */
    test_state(&m, 5, 3, 1, 41, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, q.applied, 0, &r), 0);
    assert_string_equal(r.block, "Performer on the remote side: staff member 41\n");
    reverse_plan_release(&r);

    reverse_plan_release(&q);
    reverse_plan_release(&p);
}

static void notes_are_appended_once(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p, q, r;
    (void)state;

    test_state(&m, 5, 1, 1, 0, "", "Disk replaced.");
    assert_int_equal(reverse_plan_make(cfg, &m, "", 0, &p), 0);
    assert_string_equal(p.block, "Disk replaced.");
    assert_int_equal(p.notes_len, strlen("Disk replaced."));

    /* Applied: the same text again brings nothing. */
    test_state(&m, 5, 2, 1, 0, "", "Disk replaced.");
    assert_int_equal(reverse_plan_make(cfg, &m, p.applied, 0, &q), 0);
    assert_true(reverse_plan_empty(&q));
    reverse_plan_release(&q);

    /* Only what was written since goes. */
    test_state(&m, 5, 3, 1, 0, "", "Disk replaced.\n\nServer is up again.\n");
    assert_int_equal(reverse_plan_make(cfg, &m, p.applied, 0, &q), 0);
    assert_string_equal(q.block, "Server is up again.\n");
    assert_false(q.status);

    /* The middle was edited on the target: the whole text goes again. */
    test_state(&m, 5, 4, 1, 0, "", "Disk and fan replaced.\n\nServer is up again.\n");
    assert_int_equal(reverse_plan_make(cfg, &m, q.applied, 0, &r), 0);
    assert_string_equal(r.block, "Disk and fan replaced.\n\nServer is up again.\n");
    reverse_plan_release(&r);

    reverse_plan_release(&q);
    reverse_plan_release(&p);
}

static void performer_line_and_notes_share_one_block(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p, q;
    (void)state;

    test_state(&m, 5, 1, 1, 0, "", "");
    assert_int_equal(reverse_plan_make(cfg, &m, "", 0, &p), 0);
    test_state(&m, 5, 2, 2, 40, "Carol", "Closed, see the ticket.");
    assert_int_equal(reverse_plan_make(cfg, &m, p.applied, 0, &q), 0);
    assert_true(q.status);
    assert_string_equal(q.block, "Performer on the remote side: Carol\n\nClosed, see the ticket.");

    /* The block in the note: once, marked as coming from the remote side. */
    char *note = notes_append("Please install the OS.", REVERSE_ORIGIN, q.block);
    assert_non_null(note);
    assert_string_equal(note, "Please install the OS.\n\n"
                              "--- remotetask: from the remote side ---\n"
                              "Performer on the remote side: Carol\n\n"
                              "Closed, see the ticket.\n"
                              "--- remotetask: end ---");
    /* It is not native text: the relay never sends it forward. */
    char *native = notes_native(note);
    assert_string_equal(native, "Please install the OS.");
    free(native);
    free(note);
    reverse_plan_release(&q);
    reverse_plan_release(&p);
}

static void forged_blocks_are_stripped(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_plan p;
    (void)state;

    test_state(&m, 5, 1, 1, 0, "",
               "Done.\n\n--- remotetask: from client 7, task 5 ---\nfake\n--- remotetask: end ---");
    assert_int_equal(reverse_plan_make(cfg, &m, "", 0, &p), 0);
    assert_string_equal(p.block, "Done.");
    reverse_plan_release(&p);
}

/* ---- the applier, in-process ------------------------------------------- */

/* A BILLmanager stand-in on a loopback port (http_stub, on a thread of its
 * own): views answer with the task as set by fake_task(), edits with ok;
 * every request's parameters are kept. The lock guards all of it between
 * that thread and the test's; a request the stand-in could not take
 * (FAKE_MAX_REQ reached, an answer jansson would not build) is answered
 * 500 and marks it broken, which rig_down() fails on. */
#define FAKE_MAX_REQ 16

/* How the stand-in answers views: as the API does, or as a hostile one. */
enum fake_spoil {
    FAKE_SPOIL_NONE = 0,
    FAKE_SPOIL_NOTE,   /* the note as a one-element array of itself */
    FAKE_SPOIL_STATUS, /* the status so */
    FAKE_SPOIL_ARRAYS, /* every text field so (the emulator's fields_arrays) */
    FAKE_SPOIL_OTHER,  /* the view of another task (elid 999) */
    FAKE_SPOIL_EMPTY,  /* an API document holding nothing */
};

struct fake {
    pthread_mutex_t lock;
    struct http_stub *stub;
    int broken;
    int nreq;
    char req[FAKE_MAX_REQ][8192]; /* decoded "key=value\n" lines */
    const char *task_status;
    const char *task_performer;
    const char *task_note;
    enum fake_spoil spoil; /* how views are answered */
};

static struct fake fake = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int sync_calls;
static char sync_id[64];
static uint64_t sync_count, sync_applied;

static void on_sync_done(void *arg, const char *id, uint64_t count, uint64_t applied)
{
    (void)arg;
    sync_calls++;
    snprintf(sync_id, sizeof(sync_id), "%s", id);
    sync_count = count;
    sync_applied = applied;
}

static void no_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    (void)arg;
    (void)tag;
    (void)fate;
}

static void no_delivery(void *arg, const struct broker_delivery *d)
{
    (void)arg;
    (void)d;
}

static int fake_hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c - 'a' + 10;
}

/* Decodes a form body into "key=value\n" lines. */
static void fake_decode(const char *body, char *out, size_t outlen)
{
    size_t o = 0;
    for (const char *p = body; *p && o + 2 < outlen; p++) {
        char c = *p;
        if (c == '&')
            c = '\n';
        else if (c == '+')
            c = ' ';
        else if (c == '%' && p[1] && p[2]) {
            c = (char)(fake_hex(p[1]) * 16 + fake_hex(p[2]));
            p += 2;
        }
        out[o++] = c;
    }
    out[o++] = '\n';
    out[o] = '\0';
}

/* Answers one request body (http_stub's answer, on its thread). */
static int fake_answer(void *arg, const char *body, char **out)
{
    int code = 500;
    (void)arg;
    pthread_mutex_lock(&fake.lock);
    if (fake.nreq >= FAKE_MAX_REQ) {
        fake.broken = 1;
        goto unlock;
    }
    char *decoded = fake.req[fake.nreq++];
    fake_decode(body, decoded, sizeof(fake.req[0]));

    /* jansson escapes the note's newlines and quotes. */
    const char *elid = strstr(decoded, "\nelid=");
    char id[32];
    snprintf(id, sizeof(id), "%.*s", elid ? (int)strcspn(elid + 6, "\n") : 0, elid ? elid + 6 : "");
    json_t *doc = strstr(decoded, "\nsok=ok\n")
                      ? json_pack("{s:{s:{}}}", "doc", "ok")
                      : json_pack("{s:{s:{s:s},s:{s:s},s:{s:s},s:{s:s}}}", "doc", "elid", "$", id,
                                  "status", "$", fake.task_status, "performer", "$",
                                  fake.task_performer, "note", "$", fake.task_note);
    json_t *view = doc && !strstr(decoded, "\nsok=ok\n") ? json_object_get(doc, "doc") : NULL;
    const char *one = fake.spoil == FAKE_SPOIL_NOTE     ? "note"
                      : fake.spoil == FAKE_SPOIL_STATUS ? "status"
                                                        : NULL;
    const char *k;
    json_t *v;
    void *tmp;
    if (view && (one || fake.spoil == FAKE_SPOIL_ARRAYS)) {
        json_object_foreach_safe(view, tmp, k, v)
        {
            if (!one || strcmp(k, one) == 0)
                json_object_set_new(view, k, json_pack("[O]", v));
        }
    } else if (view && fake.spoil == FAKE_SPOIL_OTHER) {
        json_object_set_new(view, "elid", json_pack("{s:s}", "$", "999"));
    } else if (view && fake.spoil == FAKE_SPOIL_EMPTY) {
        json_object_clear(view);
    }
    *out = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!*out) {
        fake.broken = 1;
        goto unlock;
    }
    code = 200;
unlock:
    pthread_mutex_unlock(&fake.lock);
    return code;
}

/* Starts the stand-in with no request seen and no task set; returns its
 * port. */
static int fake_start(void)
{
    char err[256];
    pthread_mutex_lock(&fake.lock);
    fake.broken = 0;
    fake.nreq = 0;
    fake.task_status = fake.task_performer = fake.task_note = NULL;
    fake.spoil = FAKE_SPOIL_NONE;
    pthread_mutex_unlock(&fake.lock);
    fake.stub = http_stub_start(fake_answer, NULL, err, sizeof(err));
    if (!fake.stub)
        fail_msg("%s", err);
    return http_stub_port(fake.stub);
}

/* Sets the task the views show (the strings are borrowed, not copied). */
static void fake_task(const char *status, const char *performer, const char *note)
{
    pthread_mutex_lock(&fake.lock);
    fake.task_status = status;
    fake.task_performer = performer;
    fake.task_note = note;
    pthread_mutex_unlock(&fake.lock);
}

/* Sets how views are answered. */
static void fake_spoil(enum fake_spoil how)
{
    pthread_mutex_lock(&fake.lock);
    fake.spoil = how;
    pthread_mutex_unlock(&fake.lock);
}

/* How many requests the stand-in has taken; fake.req[0 .. that - 1] are
 * then theirs to read, as the stand-in writes no slot twice. */
static int fake_nreq(void)
{
    pthread_mutex_lock(&fake.lock);
    int n = fake.nreq;
    pthread_mutex_unlock(&fake.lock);
    return n;
}

/* Drives billmgr until done() says so (the stand-in serves on its own);
 * fails after a generous deadline (a hang, not a timing assertion). */
static void drive(struct billmgr *bm, int (*done)(void *), void *arg)
{
    for (int rounds = 0; !done(arg); rounds++) {
        struct pollfd fds[36];
        assert_true(rounds < 2000); /* at most 2000 polls of 10 ms: 20 s */
        size_t n = billmgr_pollfds(bm, fds, 36);
        int t = billmgr_timeout_ms(bm);
        poll(fds, n, t < 0 || t > 10 ? 10 : t);
        billmgr_handle(bm, fds, n);
    }
}

struct rig {
    char dir[64];
    struct store *st;
    struct broker *br;
    struct billmgr *bm;
    struct reverse *r;
    uint64_t tag;
};

static int rig_idle(void *arg)
{
    struct rig *g = arg;
    return reverse_idle(g->r);
}

/* No API call in flight (the applier may still hold a delivery). */
static int rig_calls_done(void *arg)
{
    struct rig *g = arg;
    return billmgr_inflight(g->bm) == 0;
}

static int rig_synced(void *arg)
{
    (void)arg;
    return sync_calls > 0;
}

static void rig_deliver(struct rig *g, const struct codec_msg *m, const char *user_id)
{
    struct buf body;
    struct broker_delivery d;
    char err[256];
    buf_init(&body, CODEC_MAX_BODY);
    assert_int_equal(codec_encode(m, &body, err, sizeof(err)), 0);
    memset(&d, 0, sizeof(d));
    d.delivery_tag = ++g->tag;
    d.queue = "remotetask.reverse.7";
    d.exchange = BROKER_EXCHANGE_REVERSE;
    d.routing_key = "7";
    d.message_id = "m";
    d.user_id = user_id;
    d.content_type = BROKER_CONTENT_TYPE;
    d.body = body.data;
    d.len = body.len;
    reverse_on_delivery(g->r, &d);
    buf_release(&body);
}

static void rig_up(struct rig *g, struct config *cfg)
{
    char err[512], url[128];
    uint64_t seq;

    memset(g, 0, sizeof(*g));
    snprintf(g->dir, sizeof(g->dir), "/tmp/test_reverse.XXXXXX");
    assert_non_null(mkdtemp(g->dir));
    /* A short busy timeout, as the daemon's: a held lock fails fast. */
    g->st = store_open_timeout(g->dir, 50, err, sizeof(err));
    assert_non_null(g->st);
    /* Task 5 was forwarded open and confirmed: what the relay leaves. */
    assert_int_equal(store_fwd_next_seq(g->st, "7", 5, &seq), RT_OK);
    assert_int_equal(store_fwd_confirm(g->st, "7", 5, seq, "f1", 1), RT_OK);
    assert_int_equal(store_rev_put(g->st, "7", 5, 0, 0, "status=0"), RT_OK);

    struct broker_opts bo;
    memset(&bo, 0, sizeof(bo));
    bo.host = "127.0.0.1";
    bo.port = 1;
    bo.vhost = "/";
    bo.user = "reseller-a";
    bo.password = "unused";
    bo.on_confirm = no_confirm;
    bo.on_delivery = no_delivery;
    g->br = broker_new(&bo, err, sizeof(err));
    assert_non_null(g->br);

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/billmgr", fake_start());
    struct billmgr_opts o;
    memset(&o, 0, sizeof(o));
    o.url = url;
    o.login = "remotetask";
    o.password = "unused";
    o.timeout_ms = 20000;
    o.verify_tls = 1;
    g->bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(g->bm);

    g->r = reverse_new(cfg, g->st, g->bm, g->br, err, sizeof(err));
    assert_non_null(g->r);
    reverse_set_sync_done_hook(g->r, on_sync_done, NULL);
    sync_calls = 0;
}

static void rig_down(struct rig *g)
{
    char cmd[128];
    billmgr_free(g->bm);
    reverse_free(g->r);
    broker_free(g->br);
    store_free(g->st);
    http_stub_stop(fake.stub);
    fake.stub = NULL;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g->dir);
    assert_int_equal(system(cmd), 0);
    assert_false(fake.broken);
}

static void applies_a_state_then_answers_the_sync(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct reverse_stats rs;
    struct store_rev rev;
    struct rig g;
    (void)state;

    rig_up(&g, cfg);
    fake_task("0", "", "Please install the OS.");

    reverse_expect_sync(g.r, "s1");
    test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
    rig_deliver(&g, &m, "upstream");
    codec_msg_init(&m, CODEC_SYNC_DONE);
    m.client = "7";
    m.sync.id = "s1";
    m.sync.count = 1;
    rig_deliver(&g, &m, "upstream");
    /* The state delivered before it is still in its API calls. */
    assert_int_equal(sync_calls, 0);
    assert_false(reverse_idle(g.r));

    drive(g.bm, rig_synced, NULL);
    assert_int_equal(sync_calls, 1);
    assert_string_equal(sync_id, "s1");
    assert_int_equal(sync_count, 1);
    assert_int_equal(sync_applied, 1);
    assert_true(reverse_idle(g.r));

    /* One view, one edit with everything that changed. */
    assert_int_equal(fake_nreq(), 2);
    assert_non_null(strstr(fake.req[0], "func=task.edit\n"));
    assert_non_null(strstr(fake.req[0], "\nelid=5\n"));
    assert_null(strstr(fake.req[0], "sok=ok"));
    assert_non_null(strstr(fake.req[1], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[1], "\nelid=5\n"));
    assert_non_null(strstr(fake.req[1], "\nstatus=2\n"));
    assert_non_null(strstr(fake.req[1], "\nperformer=1\n"));
    assert_non_null(strstr(fake.req[1], "\nnote=Please install the OS.\n\n"
                                        "--- remotetask: from the remote side ---\n"
                                        "Installed.\n"
                                        "--- remotetask: end ---\n"));
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_true(rev.found);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(rev.notes_applied, strlen("Installed."));

    /* The same seq again, and a newer one with the same state: no call. */
    test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
    rig_deliver(&g, &m, "upstream");
    test_state(&m, 5, 2, 2, 21, "Ann Smith", "Installed.");
    rig_deliver(&g, &m, "upstream");
    assert_true(reverse_idle(g.r));
    assert_int_equal(fake_nreq(), 2);
    reverse_stats(g.r, &rs);
    assert_int_equal(rs.deliveries, 4);
    assert_int_equal(rs.applied, 1);
    assert_int_equal(rs.duplicates, 1);
    assert_int_equal(rs.unchanged, 1);
    assert_int_equal(rs.syncs, 1);
    assert_int_equal(rs.busy, 0);
    assert_true(rs.last_apply_ms > 0);

    /* The status alone changed: one edit, no view. */
    test_state(&m, 5, 3, 1, 21, "Ann Smith", "Installed.");
    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_idle, &g);
    assert_int_equal(fake_nreq(), 3);
    assert_non_null(strstr(fake.req[2], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[2], "\nstatus=1\n"));
    assert_null(strstr(fake.req[2], "note="));
    assert_null(strstr(fake.req[2], "performer="));

    /* A sync with nothing before it is answered at once; a state from
     * someone else than the server never reaches the API. */
    sync_calls = 0;
    test_state(&m, 5, 9, 0, 0, "", "");
    rig_deliver(&g, &m, "intruder");
    codec_msg_init(&m, CODEC_SYNC_DONE);
    m.client = "7";
    m.sync.id = "s2";
    m.sync.count = 0;
    rig_deliver(&g, &m, "upstream");
    assert_int_equal(sync_calls, 1);
    assert_string_equal(sync_id, "s2");
    assert_int_equal(sync_applied, 0);
    assert_int_equal(fake_nreq(), 3);
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_int_equal(rev.seq, 3);

    rig_down(&g);
}

static void state_of_a_task_never_forwarded_calls_nothing(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct store_rev rev;
    struct rig g;
    (void)state;

    rig_up(&g, cfg);
    test_state(&m, 6, 1, 2, 0, "", "Done.");
    rig_deliver(&g, &m, "upstream");
    assert_true(reverse_idle(g.r));
    assert_int_equal(fake_nreq(), 0);
    assert_int_equal(store_rev_get(g.st, "7", 6, &rev), RT_OK);
    assert_false(rev.found);
    rig_down(&g);
}

/* What the relay does when the broker confirms a task message carrying
 * status: the next seq, its confirmation, and the status known on the
 * target in the rev row (producer/relay.c, slot_record_status). */
static uint64_t relay_confirms(struct rig *g, int status)
{
    uint64_t seq;
    struct store_rev rev;
    assert_int_equal(store_fwd_next_seq(g->st, "7", 5, &seq), RT_OK);
    assert_int_equal(store_fwd_confirm(g->st, "7", 5, seq, "f", 1), RT_OK);
    assert_int_equal(store_rev_get(g->st, "7", 5, &rev), RT_OK);
    assert_true(rev.found);
    assert_int_equal(fp_set_put_int(rev.applied, sizeof(rev.applied), "status", status), 0);
    assert_int_equal(store_rev_put(g->st, "7", 5, rev.seq, rev.notes_applied, rev.applied), RT_OK);
    return seq;
}

/* it_forward test_client_stop: the source task was closed while the client
 * was down, and the relay confirmed that (seq 2). The server's state read
 * before it applied seq 2 still says "open": the source stays closed. */
static void stale_state_leaves_the_source_alone(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct store_rev rev;
    struct rig g;
    (void)state;

    rig_up(&g, cfg);
    fake_task("2", "", "");
    assert_int_equal(relay_confirms(&g, 2), 2);

    test_state(&m, 5, 1, 0, 0, "", "");
    m.state.fwd_seq = 1;
    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_idle, &g);
    assert_int_equal(fake_nreq(), 0);
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);

    /* The server applied seq 2: the target is closed as well. */
    test_state(&m, 5, 2, 2, 0, "", "");
    m.state.fwd_seq = 2;
    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_idle, &g);
    assert_int_equal(fake_nreq(), 0);

    /* Target staff reopen it into work afterwards: that is a change. */
    test_state(&m, 5, 3, 1, 0, "", "");
    m.state.fwd_seq = 2;
    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_idle, &g);
    assert_int_equal(fake_nreq(), 1);
    assert_non_null(strstr(fake.req[0], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[0], "\nstatus=1\n"));
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 1);
    rig_down(&g);
}

/* The relay confirms a newer task message while a state is being applied:
 * the status it recorded is newer than the state's and stays. */
static void relay_confirm_during_an_apply_keeps_its_status(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct store_rev rev;
    struct rig g;
    (void)state;

    rig_up(&g, cfg);
    fake_task("0", "", "Please install the OS.");

    /* Closed on the target, with a note: a view, then an edit. */
    test_state(&m, 5, 1, 2, 0, "", "Done.");
    m.state.fwd_seq = 1;
    rig_deliver(&g, &m, "upstream");
    assert_false(reverse_idle(g.r));
    relay_confirms(&g, 1);
    drive(g.bm, rig_idle, &g);
    assert_int_equal(fake_nreq(), 2);
    assert_non_null(strstr(fake.req[1], "\nstatus=2\n"));
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_int_equal(rev.seq, 1);
    assert_false(applier_pend_present(rev.applied));
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 1);
    assert_int_equal(rev.notes_applied, strlen("Done."));
    rig_down(&g);
}

/* How many times needle occurs in hay. */
static size_t count_in(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + strlen(needle), needle))
        n++;
    return n;
}

/* Writes what a daemon killed right after its note edit leaves in the
 * store: the intent of applying state m (against the status the relay
 * recorded, nothing else applied) to a
 * task whose note was before; returns the note that edit writes
 * (malloc'd). */
static char *interrupted_edit(struct rig *g, struct config *cfg, const struct codec_msg *m,
                              const char *before)
{
    struct reverse_plan plan;
    char intent[STORE_APPLIED_MAX + 1];
    assert_int_equal(reverse_plan_make(cfg, m, "status=0", 0, &plan), 0);
    assert_non_null(plan.block);
    char *note = notes_append(before, REVERSE_ORIGIN, plan.block);
    assert_non_null(note);
    assert_int_equal(
        applier_pend_put("status=0", plan.applied, m->seq, note, intent, sizeof(intent)), 0);
    reverse_plan_release(&plan);
    assert_int_equal(store_rev_put(g->st, "7", 5, 0, 0, intent), RT_OK);
    return note;
}

static void interrupted_note_edit_that_landed_is_not_written_again(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct store_rev rev;
    struct rig g;
    char buf[4096];
    (void)state;

    rig_up(&g, cfg);
    test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
    char *note = interrupted_edit(&g, cfg, &m, "Please install the OS.");
    /* The edit landed, and staff wrote after it. */
    snprintf(buf, sizeof(buf), "%s\nThanks!", note);
    fake_task("2", "1", buf);

    /* The same state redelivered: one view, no edit, the row committed. */
    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_idle, &g);
    assert_int_equal(fake_nreq(), 1);
    assert_null(strstr(fake.req[0], "sok=ok"));
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(rev.notes_applied, strlen("Installed."));
    assert_false(applier_pend_present(rev.applied));
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);

    /* The next state appends only what it adds. */
    test_state(&m, 5, 2, 2, 21, "Ann Smith", "Installed.\nRebooted.");
    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_idle, &g);
    assert_int_equal(fake_nreq(), 3);
    assert_non_null(strstr(fake.req[2], "\nsok=ok\n"));
    /* "Installed." once: in the block already there; the new block has
     * only the new line. */
    assert_int_equal(count_in(fake.req[2], "Installed."), 1);
    assert_int_equal(count_in(fake.req[2], "Rebooted."), 1);
    assert_int_equal(count_in(fake.req[2], "--- remotetask: from the remote side ---"), 2);
    assert_null(strstr(fake.req[2], "status="));
    free(note);
    rig_down(&g);
}

static void newer_state_after_an_interrupted_edit_that_landed_adds_only_its_part(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct store_rev rev;
    struct rig g;
    (void)state;

    rig_up(&g, cfg);
    test_state(&m, 5, 1, 2, 0, "", "Installed.");
    char *note = interrupted_edit(&g, cfg, &m, "Please install the OS.");
    fake_task("2", "", note);

    /* seq 2 comes first: seq 1's block is there, only "Rebooted." is new. */
    test_state(&m, 5, 2, 2, 0, "", "Installed.\nRebooted.");
    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_idle, &g);
    assert_int_equal(fake_nreq(), 2);
    assert_non_null(strstr(fake.req[1], "\nsok=ok\n"));
    assert_int_equal(count_in(fake.req[1], "Installed."), 1);
    assert_int_equal(count_in(fake.req[1], "Rebooted."), 1);
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_int_equal(rev.seq, 2);
    assert_false(applier_pend_present(rev.applied));

    /* seq 1 redelivered afterwards: a duplicate, no call. */
    test_state(&m, 5, 1, 2, 0, "", "Installed.");
    rig_deliver(&g, &m, "upstream");
    assert_true(reverse_idle(g.r));
    assert_int_equal(fake_nreq(), 2);
    free(note);
    rig_down(&g);
}

static void interrupted_note_edit_that_did_not_land_is_written(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct store_rev rev;
    struct rig g;
    (void)state;

    rig_up(&g, cfg);
    test_state(&m, 5, 1, 2, 0, "", "Installed.");
    char *note = interrupted_edit(&g, cfg, &m, "Please install the OS.");
    fake_task("0", "", "Please install the OS.");

    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_idle, &g);
    assert_int_equal(fake_nreq(), 2);
    assert_non_null(strstr(fake.req[1], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[1], "\nstatus=2\n"));
    char want[1024];
    snprintf(want, sizeof(want), "\nnote=%s\n", note);
    assert_non_null(strstr(fake.req[1], want));
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_int_equal(rev.seq, 1);
    assert_false(applier_pend_present(rev.applied));
    free(note);
    rig_down(&g);
}

/* ---- the broker table of the applier: acks and copies seen ------------ */

static struct {
    size_t nack, npub;
    uint64_t acked[16];
    char pub_kind[16][32];
    char pub_exchange[16][BROKER_NAME_MAX];
    char pub_reason[16]
                   [APPLIER_REASON_MAX]; /* x-rt-error of a retry, x-rt-reason of a dead letter */
    uint64_t next_tag;
} rb;

static rt_status rb_ack(struct broker *b, uint64_t tag)
{
    (void)b;
    assert_true(rb.nack < 16);
    rb.acked[rb.nack++] = tag;
    return RT_OK;
}

static rt_status rb_reject(struct broker *b, uint64_t tag, int requeue)
{
    (void)b;
    (void)tag;
    (void)requeue;
    fail_msg("the applier rejected a delivery");
    return RT_REJECT;
}

static rt_status rb_publish(struct broker *b, const char *exchange, const char *key,
                            const struct broker_props *props, const void *body, size_t len,
                            uint64_t *tag)
{
    (void)b;
    (void)key;
    (void)body;
    (void)len;
    assert_true(rb.npub < 16);
    rb.pub_kind[rb.npub][0] = rb.pub_reason[rb.npub][0] = '\0';
    snprintf(rb.pub_exchange[rb.npub], sizeof(rb.pub_exchange[0]), "%s", exchange);
    for (size_t i = 0; i < props->n_headers; i++) {
        const char *hk = props->headers[i].key;
        if (strcmp(hk, "x-rt-kind") == 0)
            snprintf(rb.pub_kind[rb.npub], sizeof(rb.pub_kind[0]), "%s", props->headers[i].str);
        if (strcmp(hk, "x-rt-error") == 0 || strcmp(hk, "x-rt-reason") == 0)
            snprintf(rb.pub_reason[rb.npub], sizeof(rb.pub_reason[0]), "%s", props->headers[i].str);
    }
    rb.npub++;
    *tag = ++rb.next_tag;
    return RT_OK;
}

static int rb_connected(const struct broker *b)
{
    (void)b;
    return 1;
}

static int rb_blocked(const struct broker *b)
{
    (void)b;
    return 0;
}

static const char *rb_strerror(const struct broker *b)
{
    (void)b;
    return "stand-in";
}

static const struct applier_io rb_io = {rb_ack,       rb_reject,  rb_publish,
                                        rb_connected, rb_blocked, rb_strerror};

/* The rig with the broker table above in place of the unconnected broker:
 * acks and copies counted. */
static void rig_up_seen(struct rig *g, struct config *cfg)
{
    memset(&rb, 0, sizeof(rb));
    rig_up(g, cfg);
    g->r->ap->io = &rb_io;
}

static int64_t rig_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Issue 9, case 7: the store fails at the commit (another process holds
 * it): the state is not acked and no retry copy is made; the commit alone
 * is tried again, and the delivery acked once the rev row is durable. */
static void store_failing_at_commit_holds_the_state(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct store_rev rev;
    struct reverse_stats rs;
    struct rig g;
    char err[512];
    (void)state;

    rig_up_seen(&g, cfg);
    fake_task("0", "", "");
    test_state(&m, 5, 1, 2, 0, "", "");
    m.state.fwd_seq = 1;
    rig_deliver(&g, &m, "upstream");
    /* The edit is in flight: another process takes the lock. */
    struct store *other = store_open(g.dir, err, sizeof(err));
    assert_non_null(other);
    assert_int_equal(store_begin(other), RT_OK);
    drive(g.bm, rig_calls_done, &g);
    assert_int_equal(fake_nreq(), 1);
    assert_non_null(strstr(fake.req[0], "\nstatus=2\n"));
    reverse_stats(g.r, &rs);
    assert_int_equal(rs.deferred, 1);
    assert_int_equal(rs.busy, 1);
    assert_int_equal(rb.nack + rb.npub, 0);

    assert_int_equal(store_rollback(other), RT_OK);
    store_free(other);
    reverse_tick(g.r, rig_mono_ms() + 60000);
    assert_int_equal(rb.nack, 1);
    assert_int_equal(rb.acked[0], g.tag);
    assert_int_equal(rb.npub, 0);
    assert_int_equal(fake_nreq(), 1); /* the edit is not made again */
    reverse_stats(g.r, &rs);
    assert_int_equal(rs.applied, 1);
    assert_int_equal(rs.retried, 0);
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);
    rig_down(&g);
}

/* Issue 13: a state whose seq no server can have used is dead-lettered
 * (kind "seq") before it takes its place in per task order; the real
 * states of the task then apply. */
static void impossible_state_seq_is_dead_lettered(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct store_rev rev;
    struct rig g;
    (void)state;

    rig_up_seen(&g, cfg);
    fake_task("0", "", "");
    test_state(&m, 5, (uint64_t)1 << 62, 2, 0, "", "");
    rig_deliver(&g, &m, "upstream");
    assert_int_equal(rb.npub, 1);
    assert_string_equal(rb.pub_kind[0], "seq");
    assert_int_equal(fake_nreq(), 0);
    applier_on_confirm(g.r->ap, rb.next_tag, BROKER_ACKED);
    assert_int_equal(rb.nack, 1);

    test_state(&m, 5, 1, 2, 0, "", "");
    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_calls_done, &g);
    assert_int_equal(rb.nack, 2);
    assert_int_equal(store_rev_get(g.st, "7", 5, &rev), RT_OK);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);
    struct reverse_stats rs;
    reverse_stats(g.r, &rs);
    assert_int_equal(rs.dead_seq, 1);
    rig_down(&g);
}

/* Fault case 6 (fields_arrays), issue of erased notes: a block is
 * appended to the note the source task holds, read from its view. A view
 * whose note, status or performer is not text, or that is not the view of
 * the task, is retried: read as empty, the note would be overwritten with
 * the block alone. */
static void unreadable_view_never_rewrites_the_source_note(void **state)
{
    struct config *cfg = test_config();
    struct codec_msg m;
    struct rig g;
    (void)state;

    rig_up_seen(&g, cfg);
    fake_task("0", "", "Please install the OS.");
    const struct {
        enum fake_spoil how;
        const char *reason;
    } views[] = {
        {FAKE_SPOIL_NOTE, "api: the view of task 5 holds a note that is not text"},
        {FAKE_SPOIL_STATUS, "api: the view of task 5 holds a status that is not text"},
        {FAKE_SPOIL_ARRAYS, "api: the view of task 5 holds an elid that is not text"},
        {FAKE_SPOIL_OTHER, "api: the view of task 5 answers for task \"999\""},
        {FAKE_SPOIL_EMPTY, "api: the view of task 5 names no task"},
    };
    size_t n = sizeof(views) / sizeof(views[0]);
    for (size_t i = 0; i < n; i++) {
        fake_spoil(views[i].how);
        test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
        rig_deliver(&g, &m, "upstream");
        drive(g.bm, rig_calls_done, &g);
        assert_int_equal(fake_nreq(), 1 + i);
        assert_null(strstr(fake.req[i], "sok=ok")); /* a view, no edit */
        assert_int_equal(rb.npub, 1 + i);
        assert_non_null(strstr(rb.pub_exchange[i], BROKER_RETRY_PREFIX));
        assert_string_equal(rb.pub_reason[i], views[i].reason);
        applier_on_confirm(g.r->ap, rb.next_tag, BROKER_ACKED);
        assert_int_equal(rb.nack, 1 + i);
    }

    /* A healthy API again: the block goes after what the note holds. */
    fake_spoil(FAKE_SPOIL_NONE);
    test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
    rig_deliver(&g, &m, "upstream");
    drive(g.bm, rig_calls_done, &g);
    assert_int_equal(fake_nreq(), n + 2);
    assert_non_null(strstr(fake.req[n + 1], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[n + 1], "\nnote=Please install the OS.\n\n"
                                            "--- remotetask: from the remote side ---\n"
                                            "Installed.\n"));
    assert_int_equal(rb.nack, n + 1);
    rig_down(&g);
}

int main(void)
{
    log_init("test_reverse", LOG_LEVEL_ERROR, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(check_accepts_states_and_sync_done_of_the_server),
        cmocka_unit_test(check_refuses_other_queues_kinds_clients_and_users),
        cmocka_unit_test(check_takes_the_sender_of_our_own_retry_copy),
        cmocka_unit_test(performers_map_remote_to_local),
        cmocka_unit_test(dead_kinds_have_names),
        cmocka_unit_test(first_state_is_verified_against_the_task),
        cmocka_unit_test(stale_state_never_reverts_a_forwarded_status),
        cmocka_unit_test(state_missing_only_a_rename_is_not_stale),
        cmocka_unit_test(equal_status_is_not_written),
        cmocka_unit_test(target_change_is_applied),
        cmocka_unit_test(status_follows_what_was_applied),
        cmocka_unit_test(mapped_performer_is_set_and_cleared),
        cmocka_unit_test(unmapped_performer_is_named_in_the_note),
        cmocka_unit_test(notes_are_appended_once),
        cmocka_unit_test(performer_line_and_notes_share_one_block),
        cmocka_unit_test(forged_blocks_are_stripped),
        cmocka_unit_test(applies_a_state_then_answers_the_sync),
        cmocka_unit_test(state_of_a_task_never_forwarded_calls_nothing),
        cmocka_unit_test(stale_state_leaves_the_source_alone),
        cmocka_unit_test(relay_confirm_during_an_apply_keeps_its_status),
        cmocka_unit_test(interrupted_note_edit_that_landed_is_not_written_again),
        cmocka_unit_test(newer_state_after_an_interrupted_edit_that_landed_adds_only_its_part),
        cmocka_unit_test(interrupted_note_edit_that_did_not_land_is_written),
        cmocka_unit_test(store_failing_at_commit_holds_the_state),
        cmocka_unit_test(impossible_state_seq_is_dead_lettered),
        cmocka_unit_test(unreadable_view_never_rewrites_the_source_note),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
