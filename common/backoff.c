#include "backoff.h"

#include <time.h>
#include <unistd.h>

static uint64_t backoff_rand(struct backoff *b)
{
    uint64_t x = b->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b->rng = x;
    return x;
}

void backoff_init(struct backoff *b, unsigned base_ms, unsigned max_ms, uint64_t seed)
{
    if (seed == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
    }
    b->base_ms = base_ms ? base_ms : 1;
    b->max_ms = max_ms < b->base_ms ? b->base_ms : max_ms;
    b->attempt = 0;
    b->rng = seed ? seed : 0x9e3779b97f4a7c15ULL;
}

unsigned backoff_next(struct backoff *b)
{
    uint64_t ceil = b->base_ms;
    for (unsigned i = 0; i < b->attempt && ceil < b->max_ms; i++)
        ceil *= 2;
    if (ceil > b->max_ms)
        ceil = b->max_ms;
    if (b->attempt < 64)
        b->attempt++;
    uint64_t floor = b->base_ms / 2;
    if (floor > ceil)
        floor = ceil;
    return (unsigned)(floor + backoff_rand(b) % (ceil - floor + 1));
}

void backoff_reset(struct backoff *b)
{
    b->attempt = 0;
}
