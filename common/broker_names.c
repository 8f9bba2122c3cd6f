/*
 * broker_names.c - the names of the wire: exchanges, queues, routing keys
 * and retry tiers of each client (broker.h has the picture).
 *
 * Pure functions, no connection: the declarations (broker_topology.c), the
 * appliers' retries and dead letters and the operator's tools all take
 * their names from here, so that a name is spelled once.
 */
#include "broker.h"

#include <stdarg.h>
#include <stdio.h>

#include "broker_int.h"

static const unsigned retry_delays_ms[BROKER_RETRY_TIERS] = {1000, 5000, 30000, 120000, 600000};
static const char *const retry_tier_names[BROKER_RETRY_TIERS] = {"1s", "5s", "30s", "2m", "10m"};

int broker_client_valid(const char *client)
{
    if (!client || !*client)
        return 0;
    size_t n = 0;
    for (const char *p = client; *p; p++, n++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return n <= BROKER_CLIENT_MAX;
}

static const char *dir_name(enum broker_dir dir)
{
    return dir == BROKER_REVERSE ? "reverse" : "forward";
}

const char *broker_exchange(enum broker_dir dir)
{
    return dir == BROKER_REVERSE ? BROKER_EXCHANGE_REVERSE : BROKER_EXCHANGE_FORWARD;
}

/* snprintf into buf: 0, or -1 when it did not fit. */
static int name_printf(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int name_printf(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len) {
        if (len)
            buf[0] = '\0';
        return -1;
    }
    return 0;
}

int broker_queue_name(char *buf, size_t len, enum broker_dir dir, const char *client)
{
    if (!buf || !broker_client_valid(client))
        return -1;
    return name_printf(buf, len, "%s.%s", broker_exchange(dir), client);
}

const char *broker_dir_name(enum broker_dir dir)
{
    return dir_name(dir);
}

unsigned broker_retry_tier(unsigned attempt)
{
    if (attempt <= 1)
        return 0;
    return attempt - 1 < BROKER_RETRY_TIERS ? attempt - 1 : BROKER_RETRY_TIERS - 1;
}

unsigned broker_retry_delay_ms(unsigned tier)
{
    return retry_delays_ms[tier < BROKER_RETRY_TIERS ? tier : BROKER_RETRY_TIERS - 1];
}

static const char *tier_name(unsigned tier)
{
    return retry_tier_names[tier < BROKER_RETRY_TIERS ? tier : BROKER_RETRY_TIERS - 1];
}

int broker_retry_exchange(char *buf, size_t len, const char *client)
{
    if (!buf || !broker_client_valid(client))
        return -1;
    return name_printf(buf, len, "%s.%s", BROKER_RETRY_PREFIX, client);
}

int broker_retry_tier_key(char *buf, size_t len, enum broker_dir dir, unsigned tier)
{
    if (!buf)
        return -1;
    return name_printf(buf, len, "%s.%s", dir_name(dir), tier_name(tier));
}

int broker_retry_key(char *buf, size_t len, enum broker_dir dir, unsigned attempt)
{
    return broker_retry_tier_key(buf, len, dir, broker_retry_tier(attempt));
}

int broker_retry_queue_name(char *buf, size_t len, enum broker_dir dir, const char *client,
                            unsigned tier)
{
    if (!buf || !broker_client_valid(client))
        return -1;
    return name_printf(buf, len, "%s.%s.%s.%s", BROKER_RETRY_PREFIX, client, dir_name(dir),
                       tier_name(tier));
}

int broker_dead_exchange(char *buf, size_t len, const char *client)
{
    if (!buf || !broker_client_valid(client))
        return -1;
    return name_printf(buf, len, "%s.%s", BROKER_DEAD_PREFIX, client);
}

int broker_dead_queue_name(char *buf, size_t len, enum broker_dir dir, const char *client)
{
    if (!buf || !broker_client_valid(client))
        return -1;
    return name_printf(buf, len, "%s.%s.%s", BROKER_DEAD_PREFIX, client, dir_name(dir));
}
