/*
 * fixture.h - the fixture of the producer's unit tests (test support
 * only): what test_relay and test_statepub set up alike around the
 * component they drive end to end.
 *
 * fixture_new() makes a temporary directory, starts the BILLmanager
 * stand-in (fake_bill.h) with the test's half, writes and loads the test's
 * configuration, opens a real store in its state_dir and a real billmgr
 * client of the stand-in, resets the broker stand-in (fake_broker.h) and
 * has the test make its component (r or sp) over them.
 * fixture_run_until() runs the loop a daemon would; fixture_free() tears
 * down in the order the components need: billmgr_free() first, which
 * cancels the component's calls without their callbacks, then the
 * component, then the rest.
 *
 * Everything fails the test (cmocka) rather than return an error, so
 * these run on the test's thread only.
 */
#ifndef RT_FIXTURE_H
#define RT_FIXTURE_H

#include <stdint.h>
#include <stdio.h>

#include "billmgr.h"
#include "config.h"
#include "fake_bill.h"
#include "store.h"

struct relay;
struct statepub;
struct fixture;

/* A condition fixture_run_until() waits for, and what a test does to its
 * fixture (make, free or tick its component). */
typedef int (*fixture_cond_fn)(struct fixture *fx);
typedef void (*fixture_step_fn)(struct fixture *fx);

/* What a test sets up: its name (the directory is /tmp/rt-<name>-XXXXXX,
 * the configuration <dir>/<name>.conf), its configuration past what every
 * producer test has (the amqp user, api fields past field_name = subject,
 * field_department = dept, field_updated = mtime and field_status =
 * state, the role's section), the store's busy timeout (busy_ms, for
 * store_open_timeout; 0 = store_open's), its half of the BILLmanager
 * stand-in, and its component: made over the fixture, freed (after
 * billmgr_free), and ticked on every turn of fixture_run_until(). */
struct fixture_kind {
    const char *name;
    const char *amqp_user;
    const char *api;
    const char *role;
    int busy_ms;
    fake_bill_doc_fn view_doc;
    fake_bill_doc_fn list_row;
    fixture_step_fn make;
    fixture_step_fn release;
    fixture_step_fn tick;
};

struct fixture {
    const struct fixture_kind *kind;
    char dir[64];
    struct config *cfg;
    struct store *st;
    struct billmgr *bm;
    int fake_br;         /* the broker pointer handed over; never dereferenced */
    struct relay *r;     /* test_relay's component */
    struct statepub *sp; /* test_statepub's */
};

/* Sets everything up for a test of kind k, its component included. */
struct fixture *fixture_new(const struct fixture_kind *k);

/* Tears down: billmgr_free(), then the component (kind->release), the
 * store, the configuration, the stand-ins and the directory. */
void fixture_free(struct fixture *fx);

/* Runs the loop a daemon would, until cond(fx) holds: poll on the API's
 * sockets (20 ms at most), billmgr_handle(), the component's tick. Fails
 * the test, naming what, when 20 s pass first. */
void fixture_run_until(struct fixture *fx, fixture_cond_fn cond, const char *what);

/* The wall clock in ms since the epoch (the store's time base). */
int64_t fixture_wall_ms(void);

#endif
