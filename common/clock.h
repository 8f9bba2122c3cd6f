/*
 * clock.h - the two clocks of remotetask, in milliseconds.
 *
 * Deadlines, backoffs, ticks and ages use the monotonic clock, which never
 * jumps, so that a wall clock set back stalls nothing and one set forward
 * fires nothing early. Every time that is stored, sent or shown (outbox
 * rows, message timestamps, the journal, status) uses the wall clock, the
 * store's time base. One copy for every module.
 */
#ifndef RT_CLOCK_H
#define RT_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds on CLOCK_MONOTONIC: for deadlines and ages. */
static inline int64_t clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds since the epoch: for what is stored, sent or shown. */
static inline int64_t clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
