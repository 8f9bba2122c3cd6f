#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fake_broker.h"

struct fake_broker_state fake_broker;

int broker_connected(const struct broker *b)
{
    (void)b;
    return fake_broker.connected;
}

int broker_blocked(const struct broker *b)
{
    (void)b;
    return fake_broker.blocked;
}

const char *broker_strerror(const struct broker *b)
{
    (void)b;
    return fake_broker.connected ? "blocked" : "not connected";
}

rt_status broker_publish(struct broker *b, const char *exchange, const char *routing_key,
                         const struct broker_props *props, const void *body, size_t len,
                         uint64_t *tag_out)
{
    (void)b;
    if (!fake_broker.connected || fake_broker.blocked)
        return RT_RETRY;
    assert_true(fake_broker.n < FAKE_BROKER_MAX);
    struct fake_published *p = &fake_broker.pub[fake_broker.n++];
    char err[256];
    assert_int_equal(codec_decode(body, len, &p->msg, err, sizeof err), RT_OK);
    snprintf(p->exchange, sizeof p->exchange, "%s", exchange);
    snprintf(p->key, sizeof p->key, "%s", routing_key);
    snprintf(p->message_id, sizeof p->message_id, "%s", props->message_id);
    assert_null(props->user_id);
    p->tag = ++fake_broker.next_tag;
    *tag_out = p->tag;
    return RT_OK;
}

void fake_broker_reset(void)
{
    for (size_t i = 0; i < fake_broker.n; i++)
        codec_msg_release(&fake_broker.pub[i].msg);
    memset(&fake_broker, 0, sizeof fake_broker);
    fake_broker.connected = 1;
}
