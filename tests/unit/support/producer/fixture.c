#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ftw.h>
#include <poll.h>

#include <cmocka.h>

#include "config_opts.h"
#include "fake_broker.h"
#include "fixture.h"

/* How long fixture_run_until() waits for a condition. */
#define FIXTURE_DEADLINE_MS 20000

/* Writes the configuration of kind k: what every producer test has, and
 * the test's own. */
static void fixture_write_conf(FILE *f, const struct fixture_kind *k, const char *dir, int port)
{
    fprintf(f,
            "instance = \"t\";\nstate_dir = \"%s/state\";\ncontrol_socket = \"%s/s.sock\";\n"
            "amqp: { uri = \"amqp://%s@127.0.0.1:5672/%%2f\"; password = \"p\"; };\n"
            "billmanager: { url = \"http://127.0.0.1:%d/billmgr\"; login = \"l\";\n"
            "  password = \"pw\"; max_inflight = 2; timeout = 10;\n"
            "  api: { page_size = 2; func_task = \"task.list\"; func_task_edit = \"task.view\";\n"
            "    field_name = \"subject\"; field_department = \"dept\"; field_updated = "
            "\"mtime\";\n"
            "    field_status = \"state\"; %s };\n"
            "};\n"
            "%s\n",
            dir, dir, k->amqp_user, port, k->api, k->role);
}

struct fixture *fixture_new(const struct fixture_kind *k)
{
    char path[128], err[CONFIG_ERR_MAX];
    struct fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fx->kind = k;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/rt-%s-XXXXXX", k->name);
    assert_non_null(mkdtemp(fx->dir));
    int port = fake_bill_start(k->view_doc, k->list_row);

    snprintf(path, sizeof path, "%s/%s.conf", fx->dir, k->name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fixture_write_conf(f, k, fx->dir, port);
    fclose(f);
    fx->cfg = config_load(path, err, sizeof err);
    if (!fx->cfg)
        fail_msg("config: %s", err);

    fx->st = k->busy_ms > 0 ? store_open_timeout(fx->cfg->state_dir, k->busy_ms, err, sizeof err)
                            : store_open(fx->cfg->state_dir, err, sizeof err);
    if (!fx->st)
        fail_msg("store: %s", err);
    struct billmgr_opts o;
    config_opts_billmgr(fx->cfg, &o);
    fx->bm = billmgr_new(&o, err, sizeof err);
    if (!fx->bm)
        fail_msg("billmgr: %s", err);
    fake_broker_reset();
    k->make(fx);
    return fx;
}

static int fixture_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

void fixture_free(struct fixture *fx)
{
    billmgr_free(fx->bm); /* first: cancels the component's calls without callbacks */
    fx->bm = NULL;
    fx->kind->release(fx);
    store_free(fx->st);
    config_free(fx->cfg);
    fake_bill_stop();
    fake_broker_reset();
    nftw(fx->dir, fixture_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
}

static int64_t fixture_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t fixture_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fixture_run_until(struct fixture *fx, fixture_cond_fn cond, const char *what)
{
    int64_t deadline = fixture_mono_ms() + FIXTURE_DEADLINE_MS;
    while (!cond(fx)) {
        if (fixture_mono_ms() > deadline)
            fail_msg("timed out waiting for %s", what);
        struct pollfd fds[16];
        size_t n = billmgr_pollfds(fx->bm, fds, 16);
        int t = billmgr_timeout_ms(fx->bm);
        if (t < 0 || t > 20)
            t = 20;
        int k = poll(fds, n, t);
        billmgr_handle(fx->bm, fds, k > 0 ? n : 0);
        fx->kind->tick(fx);
    }
}
