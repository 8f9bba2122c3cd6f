/*
 * backoff.h - capped exponential backoff with full jitter.
 *
 * Used for broker reconnects and API retries: the delay before attempt n
 * is a random value in [base/2, min(max, base * 2^n)], so that many
 * clients that lost the same broker do not come back in lockstep, yet the
 * first retry is never instant. The state is a plain struct: no globals.
 */
#ifndef RT_BACKOFF_H
#define RT_BACKOFF_H

#include <stdint.h>

struct backoff {
    unsigned base_ms;
    unsigned max_ms;
    unsigned attempt;
    uint64_t rng; /* xorshift state, never 0 */
};

/* Starts a backoff; seed 0 picks one from the clock and the pid. */
void backoff_init(struct backoff *b, unsigned base_ms, unsigned max_ms, uint64_t seed);

/* The delay before the next attempt, in milliseconds; advances the count. */
unsigned backoff_next(struct backoff *b);

/* After a success: the next failure starts again from base. */
void backoff_reset(struct backoff *b);

#endif
