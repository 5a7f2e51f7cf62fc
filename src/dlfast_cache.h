/* dlf_cache_bytes: the size of this machine's level-1 data or level-2 cache (sysconf, read once
   per level), for the block sizes of dlfast_sgemm.h and dlfast_dconv.h; `fallback` bytes where
   the system does not say. Block sizes order loops only: no result depends on them. */
#ifndef DLFAST_CACHE_H
#define DLFAST_CACHE_H
#include <unistd.h>

static long dlf_cache_bytes(int level, long fallback) {
    static long known[3] = {0, 0, 0};
    long v = -1;
    if (level < 1 || level > 2)
        return fallback;
    if (known[level] == 0) {
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
        v = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : _SC_LEVEL2_CACHE_SIZE);
#endif
        known[level] = v > 0 ? v : -1;
    }
    return known[level] > 0 ? known[level] : fallback;
}
#endif
