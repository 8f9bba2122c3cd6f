/* Unit tests of consumer/forward: the pure helpers (validation against the
 * configuration, the plan of an update against the applied fp set, the fp
 * set of a task found again after an interrupted create), and the applier
 * driven in-process against a loopback BILLmanager stand-in and a real
 * store, with a broker stand-in in the applier's broker table (struct
 * applier_io, applier_int.h): a store that fails at the commit, seqs no
 * sender can have used, a dead-lettered message and what comes after it.
 *
 * Unit test programs link rtconfig and rtcommon only, so the applier's
 * files (forward*.c, with the delivery slots they run on, applier*.c) are
 * compiled into this program; that also reaches their static helpers
 * (forward_block_text, forward_create_not_made) and struct forward. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../consumer/applier.c"
#include "../../consumer/applier_ack.c"
#include "../../consumer/applier_copy.c"
#include "../../consumer/applier_order.c"
#include "../../consumer/applier_view.c"
#include "../../consumer/applier_watch.c"
#include "../../consumer/forward.c"
#include "../../consumer/forward_apply.c"
#include "../../consumer/forward_link.c"
#include "../../consumer/forward_plan.c"
#include "../../consumer/forward_recover.c"

#include "fake_doc.h"
#include "http_stub.h"
#include "stderr_capture.h"

static struct config_server_client test_clients[] = {
    {.id = "7", .amqp_user = "reseller-a", .department = 12},
    {.id = "8", .amqp_user = "reseller-b", .department = 13},
};

static void test_config(struct config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->server.enabled = true;
    cfg->server.clients = test_clients;
    cfg->server.n_clients = 2;
}

/* A task message with borrowed strings (never released). */
static void test_msg(struct codec_msg *m, const char *client, int64_t task, const char *note)
{
    codec_msg_init(m, CODEC_TASK);
    m->client = (char *)client;
    m->task = task;
    m->seq = 1;
    m->fwd.department = 12;
    m->fwd.name = "Install the OS";
    m->fwd.type = "postopen";
    m->fwd.note = (char *)note;
    m->fwd.deadline = "";
    m->fwd.item = "";
    m->fwd.account = "";
    m->fwd.status = 0;
}

static void check_accepts_the_configured_client(void **state)
{
    struct config cfg;
    struct codec_msg m;
    const struct config_server_client *c = NULL;
    char reason[256];
    (void)state;
    test_config(&cfg);
    test_msg(&m, "7", 5, "");
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "reseller-a", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_NONE);
    assert_ptr_equal(c, &test_clients[0]);
    assert_string_equal(reason, "");
}

static void check_refuses_what_is_not_the_client(void **state)
{
    struct config cfg;
    struct codec_msg m;
    const struct config_server_client *c = NULL;
    char reason[256];
    (void)state;
    test_config(&cfg);
    test_msg(&m, "7", 5, "");

    assert_int_equal(forward_check(&cfg, "remotetask.forward.9", "reseller-a", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_UNAUTHORIZED);
    assert_null(c);
    assert_non_null(strstr(reason, "remotetask.forward.9"));

    /* Another client's user publishing into client 7's queue. */
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "reseller-b", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_UNAUTHORIZED);
    assert_ptr_equal(c, &test_clients[0]);
    assert_string_equal(reason, "user_id \"reseller-b\" is not the AMQP user of client 7");

    /* No user_id at all. */
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "", "upstream", NULL, &m, &c,
                                   reason, sizeof(reason)),
                     FORWARD_DEAD_UNAUTHORIZED);

    /* The message names client 8 but came through client 7's queue. */
    m.client = "8";
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "reseller-a", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_UNAUTHORIZED);
    assert_non_null(strstr(reason, "client \"8\""));

    m.client = "7";
    m.fwd.department = 13;
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "reseller-a", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_DEPARTMENT);
    assert_string_equal(reason, "department 13 is not the department of client 7");

    m.fwd.department = 12;
    m.kind = CODEC_STATE;
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "reseller-a", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_UNDECODABLE);
    assert_string_equal(reason, "unexpected kind \"state\"");
}

static void check_takes_the_sender_of_our_own_retry_copy(void **state)
{
    struct config cfg;
    struct codec_msg m;
    const struct config_server_client *c = NULL;
    char reason[256];
    (void)state;
    test_config(&cfg);
    test_msg(&m, "7", 5, "");

    /* Our own login as user_id: the x-rt-user we wrote names the sender. */
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "upstream", "upstream",
                                   "reseller-a", &m, &c, reason, sizeof(reason)),
                     FORWARD_DEAD_NONE);
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "upstream", "upstream",
                                   "reseller-b", &m, &c, reason, sizeof(reason)),
                     FORWARD_DEAD_UNAUTHORIZED);
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "upstream", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_UNAUTHORIZED);
    /* A client cannot claim a sender through the header: only a message
     * carrying our login as user_id is read that way. */
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "reseller-b", "upstream",
                                   "reseller-a", &m, &c, reason, sizeof(reason)),
                     FORWARD_DEAD_UNAUTHORIZED);
}

static void plan_of_a_create_sends_everything(void **state)
{
    struct codec_msg m;
    struct forward_plan p;
    char v[64];
    (void)state;
    test_msg(&m, "7", 5, "\n\nPlease install Debian.");
    assert_int_equal(forward_plan_make(&m, "", 0, &p), 0);
    assert_true(p.name && p.type && p.deadline && p.status);
    assert_string_equal(p.block, "Please install Debian.");
    assert_int_equal(fp_set_get_int(p.applied, "status", -1), 0);
    assert_int_equal(fp_set_get_int(p.applied, "note_len", -1), (int64_t)strlen(m.fwd.note));
    assert_int_equal(fp_set_get(p.applied, "name", v, sizeof(v)), 0);
    assert_int_equal(strlen(v), FP_HEX_LEN);
    forward_plan_release(&p);

    /* No note text: no block (the create still writes the origin header). */
    test_msg(&m, "7", 5, "");
    assert_int_equal(forward_plan_make(&m, "", 1, &p), 0);
    assert_null(p.block);
    assert_false(p.type); /* api.task_type fixes the type */
    forward_plan_release(&p);
}

/* A message read before the client applied the last state statepub
 * confirmed (rev_seq below "rev_pub") carries a status the target's own
 * change replaced: the target's status stays, the other fields apply. */
static void plan_keeps_the_target_status_over_a_stale_message(void **state)
{
    struct codec_msg m;
    struct forward_plan p, q;
    (void)state;
    test_msg(&m, "7", 5, "first line");
    assert_int_equal(forward_plan_make(&m, "", 0, &p), 0);
    /* Target staff closed the task; statepub published state 3 and
     * recorded it (what statepub writes on a confirm). */
    char set[STORE_APPLIED_MAX + 1];
    snprintf(set, sizeof(set), "%s", p.applied);
    assert_int_equal(fp_set_put_int(set, sizeof(set), "status", 2), 0);
    assert_int_equal(fp_set_put_int(set, sizeof(set), LINKSET_LINK_REV_PUB, 3), 0);
    assert_int_equal(fp_set_put_int(set, sizeof(set), LINKSET_LINK_PUB_FWD, 1), 0);

    /* Stale: renamed at the source, still open there. */
    m.fwd.name = "Renamed";
    m.fwd.status = 0;
    m.fwd.rev_seq = 2;
    assert_int_equal(forward_plan_make(&m, set, 0, &q), 0);
    assert_true(q.stale);
    assert_false(q.status);
    assert_true(q.name);
    assert_int_equal(fp_set_get_int(q.applied, "status", -1), 2);
    char merged[STORE_APPLIED_MAX + 1];
    linkset_applied_merge(set, q.applied, q.status, 1, merged, sizeof(merged));
    assert_int_equal(fp_set_get_int(merged, "status", -1), 2);
    assert_int_equal(fp_set_get_int(merged, LINKSET_LINK_REV_PUB, -1), 3);
    assert_int_equal(fp_set_get_int(merged, LINKSET_LINK_PUB_FWD, -1), 1);
    forward_plan_release(&q);

    /* Having seen state 3, the source's status is a real change. */
    m.fwd.rev_seq = 3;
    assert_int_equal(forward_plan_make(&m, set, 0, &q), 0);
    assert_false(q.stale);
    assert_true(q.status);
    assert_int_equal(fp_set_get_int(q.applied, "status", -1), 0);
    forward_plan_release(&q);

    /* A client that does not say (rev_seq 0): as before the key. */
    m.fwd.rev_seq = 0;
    assert_int_equal(forward_plan_make(&m, set, 0, &q), 0);
    assert_false(q.stale);
    assert_true(q.status);
    forward_plan_release(&q);

    /* No state confirmed yet: nothing can be stale. */
    m.fwd.rev_seq = 1;
    assert_int_equal(forward_plan_make(&m, p.applied, 0, &q), 0);
    assert_false(q.stale);
    forward_plan_release(&q);
    forward_plan_release(&p);
}

static void plan_sends_only_what_changed(void **state)
{
    struct codec_msg m;
    struct forward_plan p, q;
    (void)state;
    test_msg(&m, "7", 5, "first line");
    assert_int_equal(forward_plan_make(&m, "", 0, &p), 0);

    /* The same state again: nothing at all. */
    assert_int_equal(forward_plan_make(&m, p.applied, 0, &q), 0);
    assert_true(forward_plan_empty(&q));
    assert_string_equal(q.applied, p.applied);
    forward_plan_release(&q);

    /* A new name and a status. */
    m.fwd.name = "Install the OS, urgently";
    m.fwd.status = 1;
    assert_int_equal(forward_plan_make(&m, p.applied, 0, &q), 0);
    assert_true(q.name);
    assert_true(q.status);
    assert_false(q.type);
    assert_false(q.deadline);
    assert_null(q.block);
    assert_int_equal(fp_set_get_int(q.applied, "status", -1), 1);
    forward_plan_release(&q);

    /* Text appended to the note: only the new part goes. */
    m.fwd.note = "first line\n\nsecond line";
    assert_int_equal(forward_plan_make(&m, p.applied, 0, &q), 0);
    assert_string_equal(q.block, "second line");
    forward_plan_release(&q);

    /* The middle edited: the whole note again. */
    m.fwd.note = "FIRST line\nsecond line";
    assert_int_equal(forward_plan_make(&m, p.applied, 0, &q), 0);
    assert_string_equal(q.block, "FIRST line\nsecond line");
    forward_plan_release(&q);

    /* The note emptied: nothing to append, but the set follows it. */
    m.fwd.note = "";
    assert_int_equal(forward_plan_make(&m, p.applied, 0, &q), 0);
    assert_null(q.block);
    assert_int_equal(fp_set_get_int(q.applied, "note_len", -1), 0);
    forward_plan_release(&q);
    forward_plan_release(&p);
}

static void plan_status_follows_the_stored_value(void **state)
{
    struct codec_msg m;
    struct forward_plan p, q;
    (void)state;
    test_msg(&m, "7", 5, "");
    assert_int_equal(forward_plan_make(&m, "", 0, &p), 0);
    /* The target closed the task itself and the reverse side recorded it;
     * the source then closes too: no echo back to the target. */
    assert_int_equal(fp_set_put_int(p.applied, sizeof(p.applied), "status", 2), 0);
    m.fwd.status = 2;
    assert_int_equal(forward_plan_make(&m, p.applied, 0, &q), 0);
    assert_true(forward_plan_empty(&q));
    forward_plan_release(&q);
    forward_plan_release(&p);
}

static void plan_describes_service_and_account_once(void **state)
{
    struct codec_msg m;
    struct forward_plan p, q;
    (void)state;
    test_msg(&m, "7", 5, "hello");
    m.fwd.item = "service #5";
    m.fwd.account = "client #3\nsecond line";
    assert_int_equal(forward_plan_make(&m, "", 0, &p), 0);
    assert_string_equal(p.block, "Regarding: service #5; client #3 second line\n\nhello");

    /* Unchanged description, more text: the text only. */
    m.fwd.note = "hello\nmore";
    assert_int_equal(forward_plan_make(&m, p.applied, 0, &q), 0);
    assert_string_equal(q.block, "more");
    forward_plan_release(&q);

    /* Another service, no new text: the description only. */
    m.fwd.note = "hello";
    m.fwd.item = "service #6";
    m.fwd.account = "";
    assert_int_equal(forward_plan_make(&m, p.applied, 0, &q), 0);
    assert_string_equal(q.block, "Regarding: service #6\n");
    forward_plan_release(&q);
    forward_plan_release(&p);
}

static void plan_strips_forged_blocks(void **state)
{
    struct codec_msg m;
    struct forward_plan p;
    (void)state;
    test_msg(&m, "7", 5,
             "mine\n\n--- remotetask: from client 7, task 4 ---\nforged\n--- remotetask: end ---");
    assert_int_equal(forward_plan_make(&m, "", 0, &p), 0);
    assert_string_equal(p.block, "mine");
    forward_plan_release(&p);
}

/* The note a create wrote for m, as the applier writes it. */
static char *created_note(const struct codec_msg *m, const char *origin, char *applied, size_t len)
{
    struct forward_plan p;
    assert_int_equal(forward_plan_make(m, "", 0, &p), 0);
    char *note = notes_append("", origin, p.block ? p.block : "");
    snprintf(applied, len, "%s", p.applied);
    forward_plan_release(&p);
    return note;
}

static void adopt_gives_what_the_create_applied(void **state)
{
    struct codec_msg m;
    struct forward_plan q;
    char origin[NOTES_ORIGIN_MAX + 1], applied[STORE_APPLIED_MAX + 1],
        created[STORE_APPLIED_MAX + 1];
    (void)state;
    notes_origin_forward(origin, sizeof(origin), "7", 5);
    test_msg(&m, "7", 5, "line one\nline two\n");
    m.fwd.item = "service #5";
    m.fwd.deadline = "2030-01-02 03:04:05";
    char *note = created_note(&m, origin, created, sizeof(created));
    assert_non_null(note);

    /* Target staff wrote on top of it; the create's own block still tells. */
    char *current = notes_append("staff remark", "x", "y");
    char *edited = malloc(strlen(note) + strlen(current) + 2);
    sprintf(edited, "%s\n%s", note, current);

    assert_int_equal(forward_adopt_applied("Install the OS", "postopen", "2030-01-02 03:04:05", 0,
                                           edited, origin, &m, applied, sizeof(applied)),
                     0);
    /* The same message again changes nothing. */
    assert_int_equal(forward_plan_make(&m, applied, 0, &q), 0);
    assert_true(forward_plan_empty(&q));
    forward_plan_release(&q);

    /* A newer message with more text sends only the new part, and the
     * status the target holds now counts. */
    m.fwd.note = "line one\nline two\nline three";
    assert_int_equal(forward_adopt_applied("Install the OS", "postopen", "2030-01-02 03:04:05", 1,
                                           edited, origin, &m, applied, sizeof(applied)),
                     0);
    assert_int_equal(forward_plan_make(&m, applied, 0, &q), 0);
    assert_string_equal(q.block, "line three");
    assert_true(q.status);
    assert_false(q.name);
    forward_plan_release(&q);

    /* A name changed since the create is sent. */
    assert_int_equal(forward_adopt_applied("old name", "postopen", "2030-01-02 03:04:05", 0, edited,
                                           origin, &m, applied, sizeof(applied)),
                     0);
    assert_int_equal(forward_plan_make(&m, applied, 0, &q), 0);
    assert_true(q.name);
    forward_plan_release(&q);

    free(edited);
    free(current);
    free(note);
}

static void adopt_without_a_matching_block_resends_the_note(void **state)
{
    struct codec_msg m;
    struct forward_plan q;
    char origin[NOTES_ORIGIN_MAX + 1], applied[STORE_APPLIED_MAX + 1];
    (void)state;
    notes_origin_forward(origin, sizeof(origin), "7", 5);
    test_msg(&m, "7", 5, "completely different");
    char *note = notes_append("", origin, "what was sent first");
    assert_int_equal(forward_adopt_applied("Install the OS", "postopen", "", 0, note, origin, &m,
                                           applied, sizeof(applied)),
                     0);
    assert_int_equal(fp_set_get_int(applied, "note_len", -1), 0);
    assert_int_equal(forward_plan_make(&m, applied, 0, &q), 0);
    assert_string_equal(q.block, "completely different");
    forward_plan_release(&q);
    free(note);

    /* A block whose end line was deleted runs to the end of the note. */
    test_msg(&m, "7", 5, "abc\ndef");
    note = notes_append("", origin, "abc\n");
    char *cut = strstr(note, "--- remotetask: end ---");
    *cut = '\0';
    size_t len = 0;
    const char *text = forward_block_text(note, origin, &len);
    assert_non_null(text);
    assert_int_equal(len, 4);
    assert_int_equal(forward_adopt_applied("Install the OS", "postopen", "", 0, note, origin, &m,
                                           applied, sizeof(applied)),
                     0);
    assert_int_equal(fp_set_get_int(applied, "note_len", -1), 3);
    free(note);
}

/* A sync request passes the same authorization as a task message, and
 * carries no department to check. */
static void check_accepts_a_sync_request_of_the_client(void **state)
{
    struct config cfg;
    struct codec_msg m;
    const struct config_server_client *c = NULL;
    char reason[256];
    (void)state;
    test_config(&cfg);
    codec_msg_init(&m, CODEC_SYNC);
    m.client = "7";
    m.sync.id = "abc";
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "reseller-a", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_NONE);
    assert_non_null(c);
    assert_string_equal(c->id, "7");

    /* Sent by another client's login: refused like a task would be. */
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "reseller-b", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_UNAUTHORIZED);
    m.client = "8";
    assert_int_equal(forward_check(&cfg, "remotetask.forward.7", "reseller-a", "upstream", NULL, &m,
                                   &c, reason, sizeof(reason)),
                     FORWARD_DEAD_UNAUTHORIZED);
}

/* A forward apply rebuilds the link's applied set from its own keys but
 * keeps what the reverse publisher wrote: the "state" it last published
 * and the target's own status when no status is sent. */
static void applied_merge_keeps_the_published_state(void **state)
{
    struct codec_msg m;
    struct forward_plan plan;
    char stored[STORE_APPLIED_MAX + 1] = "", out[STORE_APPLIED_MAX + 1], v[STORE_FP_MAX + 1];
    (void)state;

    test_msg(&m, "7", 5, "first words");
    assert_int_equal(forward_plan_make(&m, "", 0, &plan), 0);
    snprintf(stored, sizeof(stored), "%s", plan.applied);
    forward_plan_release(&plan);
    /* statepub published the target's state: closed (2), fingerprint abc. */
    assert_int_equal(fp_set_put(stored, sizeof(stored), "state", "abc123"), 0);
    assert_int_equal(fp_set_put_int(stored, sizeof(stored), "status", 2), 0);

    /* The client renames the task and echoes the status it got back from
     * the target (2), which the target has: the plan sends no status. */
    m.fwd.name = "Install the OS again";
    m.fwd.status = 2;
    assert_int_equal(forward_plan_make(&m, stored, 0, &plan), 0);
    assert_true(plan.name);
    assert_false(plan.status);
    assert_int_equal(fp_set_get(plan.applied, "state", v, sizeof(v)), -1);

    linkset_applied_merge(stored, plan.applied, plan.status, 1, out, sizeof(out));
    assert_int_equal(fp_set_get(out, "state", v, sizeof(v)), 0);
    assert_string_equal(v, "abc123");
    assert_int_equal(fp_set_get_int(out, "status", -1), 2);
    assert_int_equal(fp_set_get(out, "name", v, sizeof(v)), 0);

    /* Another target task (re-created): nothing of the old one is kept. */
    linkset_applied_merge(stored, plan.applied, plan.status, 0, out, sizeof(out));
    assert_string_equal(out, plan.applied);
    assert_int_equal(fp_set_get(out, "state", v, sizeof(v)), -1);
    forward_plan_release(&plan);

    /* A plan that sends a status keeps the state but not the old status. */
    m.fwd.status = 1;
    assert_int_equal(forward_plan_make(&m, stored, 0, &plan), 0);
    assert_true(plan.status);
    linkset_applied_merge(stored, plan.applied, plan.status, 1, out, sizeof(out));
    assert_int_equal(fp_set_get_int(out, "status", -1), 1);
    assert_int_equal(fp_set_get(out, "state", v, sizeof(v)), 0);
    assert_string_equal(v, "abc123");
    forward_plan_release(&plan);
}

static void dead_kinds_have_names(void **state)
{
    (void)state;
    assert_string_equal(forward_dead_kind_name(FORWARD_DEAD_UNDECODABLE), "undecodable");
    assert_string_equal(forward_dead_kind_name(FORWARD_DEAD_UNAUTHORIZED), "unauthorized");
    assert_string_equal(forward_dead_kind_name(FORWARD_DEAD_DEPARTMENT), "department");
    assert_string_equal(forward_dead_kind_name(FORWARD_DEAD_API), "api");
}

/* The intent of a note edit (common/linkset.c), as both appliers use it. */
static void pend_intent_tells_the_set_after_a_landed_edit(void **state)
{
    char intent[STORE_APPLIED_MAX + 1], base[STORE_APPLIED_MAX + 1], v[64];
    char *note_after = NULL;
    uint64_t seq = 0;
    const char *applied = "name=n1;status=0;note_len=3;note_fp=f1;state=s1";
    const char *after = "name=n1;status=0;note_len=9;note_fp=f2;about=a2";
    const char *before = "old";
    const char *note = "old\n\n--- remotetask: from client 7, task 5 ---\nnew\n"
                       "--- remotetask: end ---\n";
    (void)state;

    assert_false(linkset_pend_present(applied));
    assert_int_equal(linkset_pend_put(applied, after, 4, note, intent, sizeof(intent)), 0);
    assert_true(linkset_pend_present(intent));
    /* Only what the edit changes is kept for after it. */
    assert_int_equal(fp_set_get(intent, "p.note_len", v, sizeof(v)), 0);
    assert_string_equal(v, "9");
    assert_int_equal(fp_set_get(intent, "p.about", v, sizeof(v)), 0);
    assert_int_equal(fp_set_get(intent, "p.name", v, sizeof(v)), -1);
    assert_int_equal(fp_set_get_int(intent, "note_len", -1), 3);

    /* Landed, with staff text after it; or the very note. */
    note_after = malloc(strlen(note) + 16);
    assert_non_null(note_after);
    sprintf(note_after, "%s\nthanks", note);
    assert_int_equal(linkset_pend_landed(intent, note_after, &seq), 1);
    assert_int_equal(seq, 4);
    assert_int_equal(linkset_pend_landed(intent, note, NULL), 1);
    assert_int_equal(linkset_pend_base(intent, 1, base, sizeof(base)), 0);
    assert_false(linkset_pend_present(base));
    assert_int_equal(fp_set_get_int(base, "note_len", -1), 9);
    assert_int_equal(fp_set_get(base, "note_fp", v, sizeof(v)), 0);
    assert_string_equal(v, "f2");
    assert_int_equal(fp_set_get(base, "about", v, sizeof(v)), 0);
    assert_string_equal(v, "a2");
    assert_int_equal(fp_set_get(base, "state", v, sizeof(v)), 0);
    assert_string_equal(v, "s1");
    assert_int_equal(fp_set_get(base, "p.note_len", v, sizeof(v)), -1);

    /* Not landed: the note as it was, or its middle edited. */
    assert_int_equal(linkset_pend_landed(intent, before, NULL), 0);
    note_after[1] = 'X';
    assert_int_equal(linkset_pend_landed(intent, note_after, NULL), 0);
    assert_int_equal(linkset_pend_landed(intent, NULL, NULL), 0);
    assert_int_equal(linkset_pend_base(intent, 0, base, sizeof(base)), 0);
    assert_false(linkset_pend_present(base));
    assert_int_equal(fp_set_get_int(base, "note_len", -1), 3);
    assert_int_equal(fp_set_get(base, "about", v, sizeof(v)), -1);
    assert_int_equal(fp_set_get(base, "state", v, sizeof(v)), 0);

    /* No intent: nothing landed, the set is kept; a new intent replaces an
     * old one; a set without room refuses one and keeps what it had. */
    assert_int_equal(linkset_pend_landed(applied, note, &seq), 0);
    assert_int_equal(seq, 0);
    assert_int_equal(linkset_pend_put(intent, after, 5, "x", base, sizeof(base)), 0);
    assert_int_equal(fp_set_get_int(base, "pend_seq", 0), 5);
    assert_int_equal(fp_set_get_int(base, "pend_len", 0), 1);
    assert_int_equal(linkset_pend_put(applied, after, 4, note, base, 40), -1);
    assert_false(linkset_pend_present(base));
    free(note_after);
}

/* Which failed creates prove that no task was made (no search after). */
static void create_failures_that_prove_nothing_was_made(void **state)
{
    struct billmgr_reply r;
    (void)state;
    memset(&r, 0, sizeof(r));
    r.err_object = "";
    r.message = "";

    r.status = RT_REJECT;
    r.err_type = "value";
    assert_true(forward_create_not_made(&r));
    r.err_type = "toolarge"; /* the answer came: it may hold a new task */
    assert_false(forward_create_not_made(&r));
    r.status = RT_RETRY;
    r.err_type = "http";
    r.http_code = 503;
    assert_true(forward_create_not_made(&r));
    r.http_code = 429;
    assert_true(forward_create_not_made(&r));
    r.http_code = 500;
    assert_false(forward_create_not_made(&r));
    r.http_code = 504;
    assert_false(forward_create_not_made(&r));
    r.http_code = 0;
    r.err_type = "timeout";
    assert_false(forward_create_not_made(&r));
    r.err_type = "transport";
    assert_false(forward_create_not_made(&r));
    r.err_type = "json";
    assert_false(forward_create_not_made(&r));
}

/* ---- the applier in-process -------------------------------------------- */

/* The broker stand-in: acks, rejects and publishes (the copies) recorded. */
#define RIG_MAX 64

static struct {
    size_t nack, nreject, npub;
    uint64_t acked[RIG_MAX];
    char pub_exchange[RIG_MAX][BROKER_NAME_MAX];
    char pub_kind[RIG_MAX][32];
    char pub_reason[RIG_MAX][APPLIER_REASON_MAX];
    uint64_t next_tag;
} rb;

static rt_status rb_ack(struct broker *b, uint64_t tag)
{
    (void)b;
    assert_true(rb.nack < RIG_MAX);
    rb.acked[rb.nack++] = tag;
    return RT_OK;
}

static rt_status rb_reject(struct broker *b, uint64_t tag, int requeue)
{
    (void)b;
    (void)tag;
    (void)requeue;
    rb.nreject++;
    return RT_OK;
}

static rt_status rb_publish(struct broker *b, const char *exchange, const char *key,
                            const struct broker_props *props, const void *body, size_t len,
                            uint64_t *tag)
{
    (void)b;
    (void)key;
    (void)body;
    (void)len;
    assert_true(rb.npub < RIG_MAX);
    snprintf(rb.pub_exchange[rb.npub], sizeof(rb.pub_exchange[0]), "%s", exchange);
    rb.pub_kind[rb.npub][0] = rb.pub_reason[rb.npub][0] = '\0';
    for (size_t i = 0; i < props->n_headers; i++) {
        if (strcmp(props->headers[i].key, "x-rt-kind") == 0)
            snprintf(rb.pub_kind[rb.npub], sizeof(rb.pub_kind[0]), "%s", props->headers[i].str);
        if (strcmp(props->headers[i].key, "x-rt-reason") == 0 ||
            strcmp(props->headers[i].key, "x-rt-error") == 0) /* a retry copy's */
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

/* The BILLmanager stand-in, a small task table: creates make a task and
 * answer its id (an edit whose name is blank is refused, as a value
 * error), edits change the fields they send, views show a task as the API
 * does (its elid, and only the fields that have a value), lists
 * (func=task) show the rows of every task. A test can make it answer as a
 * hostile API would: a create made but its answer lost (HTTP 500), lists
 * or views spoiled (enum ra_spoil), views answered with a missed error. */
#define RA_MAX_TASKS 16
#define RA_NOTE_MAX  4096

enum ra_spoil {
    RA_SPOIL_NONE = 0,
    RA_SPOIL_ARRAYS, /* every text field as a one-element array of itself */
    RA_SPOIL_NOTE,   /* the note alone as such an array */
    RA_SPOIL_OTHER,  /* the view of another task (elid and id 999) */
    RA_SPOIL_EMPTY,  /* an API document holding nothing */
};

struct ra_task {
    long id;
    char name[256];
    char note[RA_NOTE_MAX];
};

static struct {
    pthread_mutex_t lock;
    struct http_stub *stub;
    int creates, edits, views, refused, lists;
    long next_id;
    struct ra_task tasks[RA_MAX_TASKS];
    int ntasks;
    int lose_creates;            /* make the next creates, then answer HTTP 500 */
    enum ra_spoil spoil_lists;   /* how lists are answered */
    enum ra_spoil spoil_views;   /* how views are answered */
    enum ra_spoil spoil_creates; /* how creates are answered (the task is made) */
    char view_missed[32];        /* answer views with a missed error naming this */
    int view_missed_on;
} ra = {.lock = PTHREAD_MUTEX_INITIALIZER};

static struct ra_task *ra_find(long id)
{
    for (int i = 0; i < ra.ntasks; i++)
        if (ra.tasks[i].id == id)
            return &ra.tasks[i];
    return NULL;
}

static json_t *ra_spoiled(json_t *doc, enum ra_spoil how)
{
    json_t *out;
    switch (how) {
    case RA_SPOIL_ARRAYS: out = fake_doc_arrays(doc, NULL); break;
    case RA_SPOIL_NOTE: out = fake_doc_arrays(doc, "note"); break;
    case RA_SPOIL_OTHER:
        out = json_deep_copy(doc);
        fake_doc_long(out, "elid", 999);
        fake_doc_long(out, "id", 999);
        break;
    case RA_SPOIL_EMPTY: out = json_object(); break;
    default: return doc;
    }
    json_decref(doc);
    return out;
}

static int ra_answer(void *arg, const char *body, char **out)
{
    char func[32], sok[16], elid[32], name[256];
    static char note[RA_NOTE_MAX];
    int code = 200;
    (void)arg;
    pthread_mutex_lock(&ra.lock);
    fake_doc_form_get(body, "func", func, sizeof(func));
    int has_sok = fake_doc_form_get(body, "sok", sok, sizeof(sok)) == 0;
    int has_elid = fake_doc_form_get(body, "elid", elid, sizeof(elid)) == 0;
    int has_name = fake_doc_form_get(body, "name", name, sizeof(name)) == 0;
    int has_note = fake_doc_form_get(body, "note", note, sizeof(note)) == 0;
    struct ra_task *t = has_elid ? ra_find(atol(elid)) : NULL;
    json_t *doc = json_object();
    if (strcmp(func, "task") == 0) {
        ra.lists++;
        json_t *rows = json_array();
        for (int i = 0; i < ra.ntasks; i++) {
            json_t *e = json_object();
            fake_doc_long(e, "id", ra.tasks[i].id);
            fake_doc_text(e, "department", "Upstream tasks");
            fake_doc_text(e, "name", ra.tasks[i].name);
            json_array_append_new(rows, e);
        }
        if (json_array_size(rows))
            json_object_set_new(doc, "elem", rows);
        else
            json_decref(rows);
        fake_doc_long(doc, "p_elems", ra.ntasks);
        doc = ra_spoiled(doc, ra.spoil_lists);
    } else if (has_sok && has_name && strspn(name, " ") == strlen(name)) {
        ra.refused++;
        json_t *e = json_pack("{s:s,s:s,s:{s:s}}", "$type", "value", "$object", "name", "msg", "$",
                              "the name is empty");
        json_object_set_new(doc, "error", e);
    } else if (has_sok && !has_elid && ra.ntasks == RA_MAX_TASKS) {
        code = 500; /* full: no test makes that many */
    } else if (has_sok && !has_elid) {
        ra.creates++;
        t = &ra.tasks[ra.ntasks++];
        t->id = ++ra.next_id;
        snprintf(t->name, sizeof(t->name), "%s", has_name ? name : "");
        snprintf(t->note, sizeof(t->note), "%s", has_note ? note : "");
        json_object_set_new(doc, "ok", json_object());
        fake_doc_long(doc, "id", t->id);
        doc = ra_spoiled(doc, ra.spoil_creates);
        if (ra.lose_creates > 0) {
            ra.lose_creates--;
            code = 500;
        }
    } else if (has_sok) {
        ra.edits++;
        if (t && has_name)
            snprintf(t->name, sizeof(t->name), "%s", name);
        if (t && has_note)
            snprintf(t->note, sizeof(t->note), "%s", note);
        json_object_set_new(doc, "ok", json_object());
    } else if (ra.view_missed_on || !t) {
        ra.views++;
        json_t *e = json_pack("{s:s,s:s,s:{s:s}}", "$type", "missed", "$object",
                              ra.view_missed_on ? ra.view_missed : "elid", "msg", "$", "missed");
        json_object_set_new(doc, "error", e);
    } else {
        ra.views++;
        fake_doc_long(doc, "elid", t->id);
        fake_doc_long(doc, "id", t->id);
        fake_doc_text(doc, "name", t->name);
        if (t->note[0]) /* the API leaves out fields without a value */
            fake_doc_text(doc, "note", t->note);
        fake_doc_long(doc, "status", 0);
        doc = ra_spoiled(doc, ra.spoil_views);
    }
    json_t *top = json_pack("{s:o}", "doc", doc);
    *out = code == 200 ? json_dumps(top, JSON_COMPACT) : NULL;
    json_decref(top);
    pthread_mutex_unlock(&ra.lock);
    return code;
}

static int ra_count(int *field)
{
    pthread_mutex_lock(&ra.lock);
    int n = *field;
    pthread_mutex_unlock(&ra.lock);
    return n;
}

/* Sets one of the stand-in's switches under its lock. */
static void ra_set(int *field, int value)
{
    pthread_mutex_lock(&ra.lock);
    *field = value;
    pthread_mutex_unlock(&ra.lock);
}

/* The note target task id holds now (a copy). */
static void ra_note(long id, char *out, size_t outlen)
{
    pthread_mutex_lock(&ra.lock);
    struct ra_task *t = ra_find(id);
    snprintf(out, outlen, "%s", t ? t->note : "(no such task)");
    pthread_mutex_unlock(&ra.lock);
}

/* Target staff write in the note of task id. */
static void ra_staff_writes(long id, const char *text)
{
    pthread_mutex_lock(&ra.lock);
    struct ra_task *t = ra_find(id);
    assert_non_null(t);
    size_t n = strlen(t->note);
    snprintf(t->note + n, sizeof(t->note) - n, "\n%s", text);
    pthread_mutex_unlock(&ra.lock);
}

struct frig {
    char dir[64];
    struct config cfg;
    struct store *st;
    struct billmgr *bm;
    struct forward *f;
    uint64_t tag;
};

static void frig_up(struct frig *g)
{
    char err[512], url[128];
    memset(g, 0, sizeof(*g));
    memset(&rb, 0, sizeof(rb));
    pthread_mutex_lock(&ra.lock);
    ra.creates = ra.edits = ra.views = ra.refused = ra.lists = 0;
    ra.next_id = 500;
    ra.ntasks = 0;
    ra.lose_creates = 0;
    ra.spoil_lists = ra.spoil_views = ra.spoil_creates = RA_SPOIL_NONE;
    ra.view_missed_on = 0;
    pthread_mutex_unlock(&ra.lock);
    snprintf(g->dir, sizeof(g->dir), "/tmp/test_forward.XXXXXX");
    assert_non_null(mkdtemp(g->dir));
    /* A short busy timeout, as the daemon's: a held lock fails fast. */
    g->st = store_open_timeout(g->dir, 50, err, sizeof(err));
    assert_non_null(g->st);

    test_config(&g->cfg);
    struct config_billmgr_api *api = &g->cfg.billmanager.api;
    g->cfg.amqp.user = "upstream";
    g->cfg.amqp.prefetch = 8;
    g->cfg.billmanager.max_inflight = 4;
    api->func_task = "task";
    api->func_task_edit = "task.edit";
    api->field_department = "department";
    api->field_name = "name";
    api->field_type = "type";
    api->field_note = "note";
    api->field_deadline = "deadline";
    api->field_status = "status";
    api->task_type = "";
    api->page_size = 100;

    ra.stub = http_stub_start(ra_answer, NULL, err, sizeof(err));
    assert_non_null(ra.stub);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/billmgr", http_stub_port(ra.stub));
    struct billmgr_opts o;
    memset(&o, 0, sizeof(o));
    o.url = url;
    o.login = "remotetask";
    o.password = "unused";
    o.timeout_ms = 20000;
    o.verify_tls = 1;
    g->bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(g->bm);
    /* The broker is never touched: the applier's table stands in. */
    g->f = forward_new(&g->cfg, g->st, g->bm, (struct broker *)g, err, sizeof(err));
    assert_non_null(g->f);
    g->f->ap->io = &rb_io;
}

static void frig_down(struct frig *g)
{
    char cmd[128];
    billmgr_free(g->bm);
    forward_free(g->f);
    store_free(g->st);
    http_stub_stop(ra.stub);
    ra.stub = NULL;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g->dir);
    assert_int_equal(system(cmd), 0);
}

/* A task message of client 7 for task, sent by user_id (with x-rt-user
 * relayed when not NULL), with name and note. Returns its tag. */
static uint64_t frig_deliver_note(struct frig *g, int64_t task, uint64_t seq, const char *name,
                                  const char *note, const char *user_id, const char *relayed)
{
    struct codec_msg m;
    struct buf body;
    struct broker_delivery d;
    struct broker_header h[] = {{"x-rt-user", BROKER_HEADER_STR, relayed, 0}};
    char err[256];
    test_msg(&m, "7", task, note);
    m.seq = seq;
    m.fwd.name = (char *)name;
    buf_init(&body, CODEC_MAX_BODY);
    assert_int_equal(codec_encode(&m, &body, err, sizeof(err)), 0);
    memset(&d, 0, sizeof(d));
    d.delivery_tag = ++g->tag;
    d.queue = "remotetask.forward.7";
    d.exchange = BROKER_EXCHANGE_FORWARD;
    d.routing_key = "7";
    d.message_id = "m";
    d.user_id = user_id;
    d.content_type = BROKER_CONTENT_TYPE;
    d.body = body.data;
    d.len = body.len;
    d.headers = h;
    d.n_headers = relayed ? 1 : 0;
    forward_on_delivery(g->f, &d);
    buf_release(&body);
    return d.delivery_tag;
}

/* The same with the note "Please install Debian.". */
static uint64_t frig_deliver(struct frig *g, int64_t task, uint64_t seq, const char *name,
                             const char *user_id, const char *relayed)
{
    return frig_deliver_note(g, task, seq, name, "Please install Debian.", user_id, relayed);
}

static int rig_acked(uint64_t tag)
{
    for (size_t i = 0; i < rb.nack; i++)
        if (rb.acked[i] == tag)
            return 1;
    return 0;
}

/* Drives billmgr until no call is in flight; fails after a generous
 * deadline (a hang, not a timing assertion). */
static void frig_settle(struct frig *g)
{
    for (int rounds = 0; billmgr_inflight(g->bm) > 0; rounds++) {
        struct pollfd fds[36];
        assert_true(rounds < 2000);
        size_t n = billmgr_pollfds(g->bm, fds, 36);
        int t = billmgr_timeout_ms(g->bm);
        poll(fds, n, t < 0 || t > 10 ? 10 : t);
        billmgr_handle(g->bm, fds, n);
    }
}

static int64_t rig_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Issue 9, case 7: a store that fails at the commit (another process holds
 * it) is this machine's problem: the delivery is not acked and no retry
 * copy is made; the commit alone is tried again, and the delivery acked
 * once it is durable. */
static void store_failing_at_commit_holds_the_delivery(void **state)
{
    struct frig g;
    struct store_link link;
    char err[512];
    (void)state;
    frig_up(&g);
    uint64_t tag = frig_deliver(&g, 5, 1, "Install the OS", "reseller-a", NULL);
    /* The create's intent is written; now another process takes the lock
     * before the create's answer comes back. */
    struct store *other = store_open(g.dir, err, sizeof(err));
    assert_non_null(other);
    assert_int_equal(store_begin(other), RT_OK);
    frig_settle(&g);
    assert_int_equal(ra_count(&ra.creates), 1);
    assert_false(rig_acked(tag));
    assert_int_equal(rb.npub, 0);
    assert_int_equal(rb.nreject, 0);
    struct forward_stats fs;
    forward_stats(g.f, &fs);
    assert_int_equal(fs.applier.deferred, 1);
    assert_int_equal(fs.applier.busy, 1);
    assert_int_equal(fs.created, 0);

    /* Still held: tried again, deferred again, nothing else. */
    forward_tick(g.f, rig_mono_ms() + 60000);
    forward_stats(g.f, &fs);
    assert_int_equal(fs.applier.deferred, 2);
    assert_false(rig_acked(tag));

    assert_int_equal(store_rollback(other), RT_OK);
    store_free(other);
    forward_tick(g.f, rig_mono_ms() + 120000);
    assert_true(rig_acked(tag));
    assert_int_equal(rb.npub, 0);
    assert_int_equal(ra_count(&ra.creates), 1); /* the create is not made again */
    forward_stats(g.f, &fs);
    assert_int_equal(fs.created, 1);
    assert_int_equal(fs.applier.retried, 0);
    assert_int_equal(fs.applier.busy, 0);
    assert_int_equal(store_link_get(g.st, "7", 5, &link), RT_OK);
    assert_true(link.found);
    assert_int_equal(link.dst_task, 501);
    assert_int_equal(link.last_seq, 1);
    frig_down(&g);
}

/* Issue 13: a seq no sender can have used (above 2^48, or 2^32 past the
 * one applied) is dead-lettered before it takes its place in per task
 * order, so the real messages of the task are never taken for duplicates. */
static void impossible_seqs_are_dead_lettered(void **state)
{
    struct frig g;
    struct store_link link;
    (void)state;
    frig_up(&g);
    uint64_t forged = frig_deliver(&g, 5, (uint64_t)1 << 62, "Forged", "reseller-a", NULL);
    assert_int_equal(rb.npub, 1);
    assert_string_equal(rb.pub_exchange[0], "remotetask.dead.7");
    assert_string_equal(rb.pub_kind[0], "seq");
    assert_non_null(strstr(rb.pub_reason[0], "above"));
    assert_false(rig_acked(forged)); /* until the copy is confirmed */
    applier_on_confirm(g.f->ap, rb.next_tag, BROKER_ACKED);
    assert_true(rig_acked(forged));

    uint64_t real = frig_deliver(&g, 5, 1, "Install the OS", "reseller-a", NULL);
    frig_settle(&g);
    assert_true(rig_acked(real));
    assert_int_equal(ra_count(&ra.creates), 1);

    /* Past the one applied by more than 2^32. */
    frig_deliver(&g, 5, 2 + APPLIER_SEQ_MAX_JUMP, "Jumped", "reseller-a", NULL);
    assert_int_equal(rb.npub, 2);
    assert_string_equal(rb.pub_kind[1], "seq");
    assert_non_null(strstr(rb.pub_reason[1], "past seq 1"));
    applier_on_confirm(g.f->ap, rb.next_tag, BROKER_ACKED);

    uint64_t next = frig_deliver(&g, 5, 2, "Install the OS, now", "reseller-a", NULL);
    frig_settle(&g);
    assert_true(rig_acked(next));
    assert_int_equal(ra_count(&ra.edits), 1);
    assert_int_equal(store_link_get(g.st, "7", 5, &link), RT_OK);
    assert_int_equal(link.last_seq, 2);
    struct forward_stats fs;
    forward_stats(g.f, &fs);
    assert_int_equal(fs.dead_seq, 2);
    assert_int_equal(fs.applier.dead, 2);
    frig_down(&g);
}

/* Issue 9, case 10, on the server: a task message the API refuses for
 * good is dead-lettered and leaves the link at the seq before it; the next
 * message of the task applies, and the old letter replayed later (by the
 * server's own login, x-rt-user the client's) is dropped as stale without
 * a call. */
static void dead_letter_then_later_change_then_replay(void **state)
{
    struct frig g;
    struct store_link link;
    (void)state;
    frig_up(&g);
    frig_deliver(&g, 5, 1, "Install the OS", "reseller-a", NULL);
    frig_settle(&g);
    uint64_t blank = frig_deliver(&g, 5, 2, "   ", "reseller-a", NULL);
    frig_settle(&g);
    assert_int_equal(ra_count(&ra.refused), 1);
    assert_int_equal(rb.npub, 1);
    assert_string_equal(rb.pub_kind[0], "api");
    applier_on_confirm(g.f->ap, rb.next_tag, BROKER_ACKED);
    assert_true(rig_acked(blank));
    assert_int_equal(store_link_get(g.st, "7", 5, &link), RT_OK);
    assert_int_equal(link.last_seq, 1);

    uint64_t later = frig_deliver(&g, 5, 3, "Install Debian", "reseller-a", NULL);
    frig_settle(&g);
    assert_true(rig_acked(later));
    assert_int_equal(store_link_get(g.st, "7", 5, &link), RT_OK);
    assert_int_equal(link.last_seq, 3);
    int writes = ra_count(&ra.edits) + ra_count(&ra.creates) + ra_count(&ra.refused);

    uint64_t replay = frig_deliver(&g, 5, 2, "   ", "upstream", "reseller-a");
    frig_settle(&g);
    assert_true(rig_acked(replay));
    assert_int_equal(ra_count(&ra.edits) + ra_count(&ra.creates) + ra_count(&ra.refused), writes);
    assert_int_equal(rb.npub, 1);
    struct forward_stats fs;
    forward_stats(g.f, &fs);
    assert_int_equal(fs.applier.duplicates, 1);
    frig_down(&g);
}

/* Confirms every retry or dead-letter copy published so far and not yet
 * confirmed, as the broker would: their deliveries are then acked. */
static size_t rig_confirmed;

static void frig_confirm(struct frig *g)
{
    for (; rig_confirmed < rb.npub; rig_confirmed++)
        applier_on_confirm(g->f->ap, rig_confirmed + 1, BROKER_ACKED);
}

static void ra_spoil_set(enum ra_spoil *field, enum ra_spoil how)
{
    pthread_mutex_lock(&ra.lock);
    *field = how;
    pthread_mutex_unlock(&ra.lock);
}

static void ra_missed(const char *object)
{
    pthread_mutex_lock(&ra.lock);
    ra.view_missed_on = object != NULL;
    snprintf(ra.view_missed, sizeof(ra.view_missed), "%s", object ? object : "");
    pthread_mutex_unlock(&ra.lock);
}

/* The reason of the last copy published: a retry, with its reason. */
static const char *last_retry_reason(void)
{
    assert_true(rb.npub > 0);
    assert_non_null(strstr(rb.pub_exchange[rb.npub - 1], BROKER_RETRY_PREFIX));
    return rb.pub_reason[rb.npub - 1];
}

/* Fault case 6 (fields_arrays), issue of duplicated target tasks: a
 * create whose answer was lost is looked for before it is made again. A
 * list row whose id is not text, or a candidate whose view holds a note
 * that is not text, or is the view of another task, may be the task that
 * create made: the delivery is retried, never created a second time. */
static void unreadable_answers_never_make_an_interrupted_create_twice(void **state)
{
    struct frig g;
    struct store_link link;
    struct forward_stats fs;
    (void)state;
    frig_up(&g);
    rig_confirmed = 0;
    ra_set(&ra.lose_creates, 1);
    uint64_t tag = frig_deliver(&g, 5, 1, "Install the OS", "reseller-a", NULL);
    frig_settle(&g);
    assert_int_equal(ra_count(&ra.creates), 1);
    assert_int_equal(rb.npub, 1);
    last_retry_reason();
    frig_confirm(&g);
    assert_true(rig_acked(tag));

    /* The retry copy comes back while lists come as arrays. */
    ra_spoil_set(&ra.spoil_lists, RA_SPOIL_ARRAYS);
    tag = frig_deliver(&g, 5, 1, "Install the OS", "upstream", "reseller-a");
    frig_settle(&g);
    assert_int_equal(ra_count(&ra.lists), 1);
    assert_int_equal(ra_count(&ra.creates), 1);
    assert_int_equal(rb.npub, 2);
    assert_string_equal(last_retry_reason(),
                        "api: the list of department 12 has a row whose id is not text");
    frig_confirm(&g);
    assert_true(rig_acked(tag));

    /* The list is fine, the view of the candidate is not. */
    ra_spoil_set(&ra.spoil_lists, RA_SPOIL_NONE);
    const struct {
        enum ra_spoil how;
        const char *reason;
    } views[] = {
        {RA_SPOIL_NOTE, "api: the view of task 501 of department 12 holds a note that is not text"},
        {RA_SPOIL_ARRAYS, "api: the view of task 501 of department 12 holds an elid that is not "
                          "text"},
        {RA_SPOIL_OTHER, "api: the view of task 501 of department 12 answers for task \"999\""},
        {RA_SPOIL_EMPTY, "api: the view of task 501 of department 12 names no task"},
    };
    for (size_t i = 0; i < sizeof(views) / sizeof(views[0]); i++) {
        ra_spoil_set(&ra.spoil_views, views[i].how);
        tag = frig_deliver(&g, 5, 1, "Install the OS", "upstream", "reseller-a");
        frig_settle(&g);
        assert_int_equal(ra_count(&ra.creates), 1);
        assert_int_equal(rb.npub, 3 + i);
        assert_string_equal(last_retry_reason(), views[i].reason);
        frig_confirm(&g);
        assert_true(rig_acked(tag));
    }

    /* A healthy API again: the task the first create made is found. */
    ra_spoil_set(&ra.spoil_views, RA_SPOIL_NONE);
    tag = frig_deliver(&g, 5, 1, "Install the OS", "upstream", "reseller-a");
    frig_settle(&g);
    assert_true(rig_acked(tag));
    assert_int_equal(ra_count(&ra.creates), 1);
    assert_int_equal(store_link_get(g.st, "7", 5, &link), RT_OK);
    assert_int_equal(link.dst_task, 501);
    assert_int_equal(link.last_seq, 1);
    forward_stats(g.f, &fs);
    assert_int_equal(fs.adopted, 1);
    assert_int_equal(fs.created, 0);

    /* A create answered with an id that is not text: made, and found. */
    ra_spoil_set(&ra.spoil_creates, RA_SPOIL_ARRAYS);
    tag = frig_deliver(&g, 6, 1, "Install the OS", "reseller-a", NULL);
    frig_settle(&g);
    assert_int_equal(ra_count(&ra.creates), 2);
    assert_string_equal(last_retry_reason(),
                        "api: the create answered without an id (its id is not text)");
    frig_confirm(&g);
    assert_true(rig_acked(tag));
    ra_spoil_set(&ra.spoil_creates, RA_SPOIL_NONE);
    tag = frig_deliver(&g, 6, 1, "Install the OS", "upstream", "reseller-a");
    frig_settle(&g);
    assert_true(rig_acked(tag));
    assert_int_equal(ra_count(&ra.creates), 2);
    assert_int_equal(store_link_get(g.st, "7", 6, &link), RT_OK);
    assert_int_equal(link.dst_task, 502);
    frig_down(&g);
}

/* Fault case 6 (fields_arrays), issue of erased notes: a block is
 * appended to the note the target holds, read from its view. A view whose
 * note is not text, or that is not the view of the target task, cannot
 * tell what the note holds: the delivery is retried and the note, with
 * what target staff wrote in it, is left alone. */
static void unreadable_view_never_rewrites_the_target_note(void **state)
{
    struct frig g;
    struct store_link link;
    char note[RA_NOTE_MAX];
    (void)state;
    frig_up(&g);
    rig_confirmed = 0;
    uint64_t tag = frig_deliver(&g, 5, 1, "Install the OS", "reseller-a", NULL);
    frig_settle(&g);
    assert_true(rig_acked(tag));
    ra_staff_writes(501, "Staff: disk replaced.");

    const struct {
        enum ra_spoil how;
        const char *reason;
    } views[] = {
        {RA_SPOIL_NOTE, "api: the view of target task 501 holds a note that is not text"},
        {RA_SPOIL_ARRAYS, "api: the view of target task 501 holds an elid that is not text"},
        {RA_SPOIL_OTHER, "api: the view of target task 501 answers for task \"999\""},
        {RA_SPOIL_EMPTY, "api: the view of target task 501 names no task"},
    };
    for (size_t i = 0; i < sizeof(views) / sizeof(views[0]); i++) {
        ra_spoil_set(&ra.spoil_views, views[i].how);
        tag = frig_deliver_note(&g, 5, 2, "Install the OS", "Please install Debian.\nAnd RAID 1.",
                                "reseller-a", NULL);
        frig_settle(&g);
        assert_int_equal(ra_count(&ra.edits), 0);
        assert_int_equal(rb.npub, 1 + i);
        assert_string_equal(last_retry_reason(), views[i].reason);
        frig_confirm(&g);
        assert_true(rig_acked(tag));
        ra_note(501, note, sizeof(note));
        assert_non_null(strstr(note, "Staff: disk replaced."));
        assert_non_null(strstr(note, "Please install Debian."));
    }
    assert_int_equal(store_link_get(g.st, "7", 5, &link), RT_OK);
    assert_int_equal(link.last_seq, 1);

    /* Healthy again: the block is appended to everything the note holds. */
    ra_spoil_set(&ra.spoil_views, RA_SPOIL_NONE);
    tag = frig_deliver_note(&g, 5, 2, "Install the OS", "Please install Debian.\nAnd RAID 1.",
                            "upstream", "reseller-a");
    frig_settle(&g);
    assert_true(rig_acked(tag));
    assert_int_equal(ra_count(&ra.edits), 1);
    ra_note(501, note, sizeof(note));
    assert_non_null(strstr(note, "Please install Debian."));
    assert_non_null(strstr(note, "Staff: disk replaced."));
    assert_non_null(strstr(note, "And RAID 1."));
    assert_int_equal(ra_count(&ra.creates), 1);
    frig_down(&g);
}

/* A missed error says the target task is gone only when its $object names
 * the element (elid, or task), as the relay reads it. The function (func,
 * or its name: a misspelt api.func_task_edit) or nothing says nothing about
 * the task: the delivery is retried, no task is created again, and a
 * missing function is logged at error once, not once per message. */
static void missed_not_naming_the_task_makes_no_task(void **state)
{
    struct frig g;
    struct store_link link;
    (void)state;
    frig_up(&g);
    rig_confirmed = 0;
    uint64_t tag = frig_deliver(&g, 5, 1, "Install the OS", "reseller-a", NULL);
    frig_settle(&g);
    assert_true(rig_acked(tag));

    /* The view of the target before a note block. What is asserted is
     * kept until the log is back: a failure must not jump out of it. */
    const char *objects[] = {"func", "task.edit", ""};
    int creates[3], acked[3];
    size_t npub[3];
    char reasons[3][APPLIER_REASON_MAX];
    stderr_capture_begin();
    for (size_t i = 0; i < 3; i++) {
        ra_missed(objects[i]);
        tag = frig_deliver_note(&g, 5, 2, "Install the OS", "Please install Debian.\nAnd RAID 1.",
                                "reseller-a", NULL);
        frig_settle(&g);
        creates[i] = ra_count(&ra.creates);
        npub[i] = rb.npub;
        snprintf(reasons[i], sizeof(reasons[i]), "%s", rb.npub ? rb.pub_reason[rb.npub - 1] : "");
        frig_confirm(&g);
        acked[i] = rig_acked(tag);
    }
    int lines = stderr_capture_end("check billmanager.api.func_task_edit");
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(creates[i], 1);
        assert_int_equal(npub[i], 1 + i);
        assert_non_null(strstr(reasons[i], "api: viewing the target task: "));
        if (*objects[i])
            assert_non_null(strstr(reasons[i], "does not exist on this BILLmanager"));
        assert_true(acked[i]);
    }
    assert_int_equal(lines, 1);

    /* The view of a candidate of an interrupted create: not skipped. */
    ra_missed(NULL);
    ra_set(&ra.lose_creates, 1);
    tag = frig_deliver(&g, 6, 1, "Install the OS", "reseller-a", NULL);
    frig_settle(&g);
    assert_int_equal(ra_count(&ra.creates), 2);
    frig_confirm(&g);
    ra_missed("func");
    tag = frig_deliver(&g, 6, 1, "Install the OS", "upstream", "reseller-a");
    frig_settle(&g);
    assert_int_equal(ra_count(&ra.creates), 2);
    assert_non_null(strstr(last_retry_reason(), "does not exist on this BILLmanager"));
    frig_confirm(&g);
    assert_true(rig_acked(tag));
    ra_missed(NULL);
    tag = frig_deliver(&g, 6, 1, "Install the OS", "upstream", "reseller-a");
    frig_settle(&g);
    assert_true(rig_acked(tag));
    assert_int_equal(ra_count(&ra.creates), 2);
    assert_int_equal(store_link_get(g.st, "7", 6, &link), RT_OK);
    assert_int_equal(link.dst_task, 502);

    /* The element missed: the target task is gone and made again. */
    ra_missed("elid");
    tag = frig_deliver_note(&g, 5, 2, "Install the OS", "Please install Debian.\nAnd RAID 1.",
                            "reseller-a", NULL);
    frig_settle(&g);
    assert_true(rig_acked(tag));
    assert_int_equal(ra_count(&ra.creates), 3);
    assert_int_equal(store_link_get(g.st, "7", 5, &link), RT_OK);
    assert_int_equal(link.dst_task, 503);
    frig_down(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(check_accepts_the_configured_client),
        cmocka_unit_test(check_refuses_what_is_not_the_client),
        cmocka_unit_test(check_takes_the_sender_of_our_own_retry_copy),
        cmocka_unit_test(plan_of_a_create_sends_everything),
        cmocka_unit_test(plan_sends_only_what_changed),
        cmocka_unit_test(plan_keeps_the_target_status_over_a_stale_message),
        cmocka_unit_test(plan_status_follows_the_stored_value),
        cmocka_unit_test(plan_describes_service_and_account_once),
        cmocka_unit_test(plan_strips_forged_blocks),
        cmocka_unit_test(adopt_gives_what_the_create_applied),
        cmocka_unit_test(adopt_without_a_matching_block_resends_the_note),
        cmocka_unit_test(check_accepts_a_sync_request_of_the_client),
        cmocka_unit_test(applied_merge_keeps_the_published_state),
        cmocka_unit_test(dead_kinds_have_names),
        cmocka_unit_test(pend_intent_tells_the_set_after_a_landed_edit),
        cmocka_unit_test(create_failures_that_prove_nothing_was_made),
        cmocka_unit_test(store_failing_at_commit_holds_the_delivery),
        cmocka_unit_test(impossible_seqs_are_dead_lettered),
        cmocka_unit_test(dead_letter_then_later_change_then_replay),
        cmocka_unit_test(unreadable_answers_never_make_an_interrupted_create_twice),
        cmocka_unit_test(unreadable_view_never_rewrites_the_target_note),
        cmocka_unit_test(missed_not_naming_the_task_makes_no_task),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
