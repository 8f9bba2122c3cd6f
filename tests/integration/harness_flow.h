/*
 * harness_flow.h - count what a forward-path scenario sent and what arrived:
 * source tasks matched to target tasks through the origin block the
 * server writes into the target's note ("from client C, task T",
 * common/notes.h).
 *
 *   sent       source tasks of the mapped department
 *   applied    source tasks that have a target task
 *   lost       source tasks that have none
 *   duplicated target tasks beyond one per source task
 *   stale      source tasks whose target task holds other fields
 *   foreign    target tasks of the department without an origin of ours
 *
 * Used by tests/integration/it_forward.c and the fault suite
 * (tests/faults/). Functions that wait poll the emulator with a deadline
 * (harness_wait_tasks), never a fixed sleep; the ones named expect_ fail
 * the running cmocka test, after printing both daemons' logs, when the
 * condition does not hold.
 */
#ifndef RT_HARNESS_FLOW_H
#define RT_HARNESS_FLOW_H

#include <stddef.h>

#include <jansson.h>

#include "harness_daemon.h"

struct harness_flow_count {
    size_t sent;       /* source tasks */
    size_t applied;    /* source tasks that have a target task */
    size_t lost;       /* source tasks that have none */
    size_t duplicated; /* target tasks beyond one per source task */
    size_t stale;      /* source tasks whose target task has other fields */
    size_t foreign;    /* target tasks in the department without our origin */
    char first_stale[512];
    long long first_stale_id; /* the source task of first_stale */
    long long first_lost;
};

/* The source task a target note names as its origin for client, or 0 when
 * the note holds no such origin block. */
long long harness_flow_note_origin(const char *note, const char *client);

/* 1 when the target task dst carries the final forward fields of the
 * source task src: name, type, deadline and status equal, and every line
 * of the source's note in the target's note. Otherwise 0, with what
 * differs written into why (len bytes, NUL-terminated). */
int harness_flow_fields_match(const json_t *src, const json_t *dst, char *why, size_t len);

/* Matches the source tasks src (an emulator's "tasks" array) to the target
 * tasks dst by their origin for client and fills *c. Only reads src and
 * dst. */
void harness_flow_count(const char *client, json_t *src, json_t *dst, struct harness_flow_count *c);

/* The state of a wait for a whole flow: fill client and src (borrowed),
 * pass to harness_wait_tasks with harness_flow_done; count holds the last
 * figures. */
struct harness_flow_wait {
    const char *client;
    json_t *src;
    struct harness_flow_count count;
};

/* A harness_wait_tasks condition: counts dst against w->src and says yes
 * once nothing is lost and nothing is stale. arg is a struct
 * harness_flow_wait. */
int harness_flow_done(json_t *dst, void *arg);

/* Waits up to timeout_ms until every task of the source's mapped
 * department is on the target with its current fields; fills *c (may be
 * NULL) with the last count and returns 1 when that happened, 0 when the
 * deadline passed. Never fails the test. */
int harness_flow_wait_all(struct harness_scenario *s, long long timeout_ms,
                          struct harness_flow_count *c);

/* Waits as harness_flow_wait_all, prints the scenario's line
 *     <scenario>: sent=N applied=N lost=N duplicated=N
 * and fails the test (printing both logs) unless nothing was lost, stale,
 * duplicated or foreign. Returns the source task count. */
size_t harness_flow_expect_all_applied(struct harness_scenario *s, const char *scenario,
                                       long long timeout_ms);

/* How many target tasks carry an origin of the scenario's client now. */
size_t harness_flow_target_count(struct harness_scenario *s);

/* Waits until the target holds at least n tasks of the scenario's client;
 * fails the test (printing both logs) when it does not within timeout_ms. */
void harness_flow_wait_target_count(struct harness_scenario *s, size_t n, long long timeout_ms);

#endif
