#ifndef SCORE_MEMORY_H
#define SCORE_MEMORY_H
#include <stddef.h>

/// Asks the C allocator to keep freed large blocks for reuse instead of returning them to the
/// kernel (glibc only; a no-op elsewhere). Idempotent.
void score_keep_freed_memory(void);

/// Tensor storage: a 64-byte aligned buffer of at least `bytes` bytes. Buffers of 128 KiB and
/// more come from a cache of freed buffers (eight size classes per power of two; a request takes
/// a cached buffer of its class or of up to seven classes above) and are mapped fresh only on a
/// miss, those of 2 MiB and more 2 MiB aligned so that they can be transparent huge pages;
/// smaller ones come from malloc. Thread-safe.
void *score_buffer_alloc(size_t bytes);
/// Returns a buffer from score_buffer_alloc (NULL is ignored) to the cache, or to the system
/// when the cache is at its cap.
void score_buffer_free(void *buffer);
/// Whether fresh buffers of 2 MiB and more are advised for transparent huge pages: off unless
/// the environment sets SCORE_HUGE_PAGES=1 (memory.c says why); the setter applies to buffers
/// mapped after it.
int score_buffer_huge_pages(void);
void score_buffer_set_huge_pages(int enabled);
/// Returns every cached buffer to the system.
void score_buffer_release_cached(void);
/// Caps the bytes the cache keeps (the default: SCORE_BUFFER_CACHE_MB, or half the physical memory); 0 turns
/// caching off. Buffers over the cap are released at once.
void score_buffer_set_cache_limit(size_t bytes);

typedef struct {
    size_t cached_bytes;      // held in the cache now
    size_t live_bytes;        // handed out and not yet freed (large buffers only)
    size_t cache_limit;
    unsigned long long hits;  // large requests served from the cache
    unsigned long long misses;
    size_t mapped_bytes;      // mapped fresh on misses since the start (what the kernel had to fault in)
    size_t peak_bytes;        // the most bytes held at once, live plus cached (large buffers only)
} score_buffer_stats;
score_buffer_stats score_buffer_statistics(void);
#endif
