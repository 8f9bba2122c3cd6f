/*
 * now.h - the two clocks of remotetaskd, in milliseconds.
 *
 * Deadlines (reconnects, drains, checkevent waits, the age of cached queue
 * depths) and the components' ticks use the monotonic clock, which never
 * jumps; every time that is stored or shown uses the wall clock, the
 * store's time base. Private to bridge/.
 */
#ifndef RT_NOW_H
#define RT_NOW_H

#include <stdint.h>
#include <time.h>

/* Milliseconds on CLOCK_MONOTONIC: for deadlines and ages. */
static inline int64_t now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds since the epoch: the store's time base, handed to the
 * components. */
static inline int64_t now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
