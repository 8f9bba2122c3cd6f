/*
 * fake_bill.h - a BILLmanager of tasks for the producer's unit tests (test
 * support only): the half of the stand-in the relay's and the state
 * publisher's tests share, on the loopback HTTP server of http_stub.h.
 *
 * It answers the two functions the tests' configurations name, over the
 * task table fake_bill.tasks (index = task id, 1 to FAKE_BILL_TASKS - 1):
 * - "task.view" elid=N: the test's view_doc() of task N; a missed error
 *   naming elid when the task does not exist;
 * - "task.list" filter=on&dept=D&p_cnt=C&p_num=P: page P of C rows, each
 *   the test's list_row() of a task of department D in id order, with
 *   p_elems, p_num and p_cnt; nothing without filter=on;
 * and a missed error naming func for any other function. The knobs below
 * make it fail or answer as a hostile API would. What is view_doc() and
 * list_row() is the test's own half: the fields its component reads.
 *
 * The answers run on the stub's thread: everything in fake_bill is
 * guarded by fake_bill.lock (fake_bill_get and fake_bill_set take it),
 * and view_doc() and list_row() must only build JSON (no cmocka
 * assertions). Not reentrant: one stand-in per test program.
 */
#ifndef RT_FAKE_BILL_H
#define RT_FAKE_BILL_H

#include <pthread.h>

#include <jansson.h>

#define FAKE_BILL_TASKS 32

struct fake_task {
    int exists;
    long id;
    long department;
    int status;
    long performer; /* 0 = none */
    long item;      /* 0 = none */
    char name[64];
    char note[512];
    char updated[32];
};

/* A task as the test's half shows it: a new JSON object. */
typedef json_t *(*fake_bill_doc_fn)(const struct fake_task *t);

struct fake_bill {
    pthread_mutex_t lock;
    struct http_stub *stub;
    fake_bill_doc_fn view_doc;
    fake_bill_doc_fn list_row;
    struct fake_task tasks[FAKE_BILL_TASKS];
    int views;            /* task.view calls answered */
    int lists;            /* task.list calls answered */
    int fail_views;       /* answer this many views with HTTP 503 */
    int fail_lists;       /* answer this many lists with HTTP 503 */
    int deny_views;       /* answer views with an access error */
    char view_missed[32]; /* answer views with a missed error naming this ("" = no);
                             "func" is what BILLmanager says of a function it lacks */
    /* Hostile answers: views with the text value of this field ("*":
     * every one) as a one-element array of itself (fake_doc_arrays), views
     * of another task (id 999), views holding nothing, lists with every
     * text value so. */
    char view_arrays[16];
    int view_other;
    int view_empty;
    int list_arrays;
    char last_filter[64]; /* the dept of the last list */
    long last_p_num;      /* the p_num of the last list */
};

extern struct fake_bill fake_bill;

/* Forgets every task, counter and knob, and starts serving with the test's
 * view_doc and list_row. Returns the port; fails the test when the stub
 * cannot start. */
int fake_bill_start(fake_bill_doc_fn view_doc, fake_bill_doc_fn list_row);

/* Stops serving (a request being answered is finished first). */
void fake_bill_stop(void);

/* Puts a copy of *t in the table at t->id, under the lock. */
void fake_bill_put(const struct fake_task *t);

/* Reads or writes one int of fake_bill under its lock. */
int fake_bill_get(const int *field);
void fake_bill_set(int *field, int value);

#endif
