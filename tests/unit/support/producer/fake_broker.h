/*
 * fake_broker.h - the broker as the producer's unit tests see it (test
 * support only): the four functions of common/broker.h that the relay and
 * the state publisher call, broker_connected(), broker_blocked(),
 * broker_strerror() and broker_publish(), defined over a recording
 * stand-in, fake_broker.
 *
 * The definitions are the real functions' names, so this file is compiled
 * into test_relay and test_statepub alone (tests/CMakeLists.txt, as
 * objects): in the archive every unit test links, it would take the place
 * of the broker's own functions in test_broker. The broker pointer the
 * component is given is never dereferenced.
 *
 * broker_publish() refuses for now (RT_RETRY) while not connected or
 * blocked; otherwise it decodes the body (one that does not decode fails
 * the test, as does a user_id or more than FAKE_BROKER_MAX publishes) and
 * records the exchange, routing key, message id and message under the
 * next tag, from 1. It asserts with cmocka: the test's thread only.
 */
#ifndef RT_FAKE_BROKER_H
#define RT_FAKE_BROKER_H

#include <stddef.h>
#include <stdint.h>

#include "broker.h"
#include "codec.h"

/* Publishes one test may make. */
#define FAKE_BROKER_MAX 128

struct fake_published {
    uint64_t tag;
    char exchange[64];
    char key[64];
    char message_id[160];
    struct codec_msg msg; /* decoded; freed by fake_broker_reset() */
};

struct fake_broker_state {
    int connected; /* 1 after fake_broker_reset() */
    int blocked;
    uint64_t next_tag;
    struct fake_published pub[FAKE_BROKER_MAX];
    size_t n;         /* publishes recorded */
    size_t confirmed; /* the test's: pub[0..confirmed) were given a fate */
};

extern struct fake_broker_state fake_broker;

/* Forgets every publish (their messages freed) and reconnects: connected,
 * not blocked, tags from 1 again. */
void fake_broker_reset(void);

#endif
