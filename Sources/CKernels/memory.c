#include "score_memory.h"
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

// For what malloc still serves (buffers under 128 KiB, Swift arrays): glibc hands blocks over
// 128 KiB straight to mmap and unmaps them on free, and trims the heap's top, so a loop that
// allocates and frees page-faults into freshly zeroed pages every time.
void score_keep_freed_memory(void) {
#ifdef __GLIBC__
    static int done = 0;
    if (done) return;
    done = 1;
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

// The buffer cache. A forward and backward pass allocate the same sizes step after step, so a
// freed activation is kept and handed to the next request of its size class: no mmap, no page
// faults, no zeroing by the kernel. Large buffers are mapped directly (not through malloc, whose
// heap fragments and whose thread arenas return memory on their own schedule) and asked for
// transparent huge pages, which cut the faults of a fresh buffer 512-fold where they are on.
//
// Each buffer carries a 64-byte header (its class), so free needs no size and the data stays
// 64-byte aligned. A miss may take a cached buffer up to two classes larger (at most ~30% unused)
// before mapping a new one: the sizes of a backward pass differ a little from the forward's.

#define HEADER 64
#define SMALL_LIMIT ((size_t)128 << 10)
#define MIN_EXPONENT 17            // 2^17 = 128 KiB, glibc's default mmap threshold
#define CLASSES_PER_OCTAVE 8
#define OCTAVES 30                 // up to 2^48 bytes
#define CLASS_COUNT (OCTAVES * CLASSES_PER_OCTAVE)
#define SMALL_MARK ((uint64_t)-1)

// The header of a buffer: its class, and while it is cached the next cached buffer of the class.
typedef struct cached_buffer { uint64_t index; struct cached_buffer *next; } cached_buffer;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static cached_buffer *free_lists[CLASS_COUNT];
static size_t cached_bytes, live_bytes;
static size_t cache_limit = (size_t)-1;   // (size_t)-1: not read from the environment yet
static unsigned long long hits, misses;

static size_t class_index(size_t bytes) {
    int e = 63 - __builtin_clzll((unsigned long long)bytes);   // 2^e ≤ bytes < 2^(e+1)
    size_t step = (size_t)1 << (e - 3);
    size_t steps = (bytes + step - 1) / step;                   // 8…16
    size_t index = (size_t)(e - MIN_EXPONENT) * CLASSES_PER_OCTAVE + (steps - CLASSES_PER_OCTAVE);
    return index;   // steps == 16 rolls over into the next octave's first class
}

static size_t class_bytes(size_t index) {
    size_t octave = index / CLASSES_PER_OCTAVE, sub = index % CLASSES_PER_OCTAVE;
    size_t step = (size_t)1 << (octave + MIN_EXPONENT - 3);
    return (CLASSES_PER_OCTAVE + sub) * step;
}

static void ensure_limit_locked(void) {
    if (cache_limit != (size_t)-1) return;
    score_keep_freed_memory();   // for the small buffers and everything else malloc serves
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    cache_limit = pages > 0 && page > 0 ? (size_t)pages * (size_t)page / 2 : (size_t)4 << 30;
    const char *text = getenv("SCORE_BUFFER_CACHE_MB");
    if (text && *text) cache_limit = (size_t)strtoull(text, NULL, 10) << 20;
}

#define HUGE_PAGE ((size_t)2 << 20)
#define HUGE_FROM ((size_t)8 << 20)   // rounding up to whole huge pages wastes at most 25% above this

static size_t mapped_bytes(size_t index) {
    size_t size = HEADER + class_bytes(index);
    return size >= HUGE_FROM ? (size + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE : size;
}

// A fresh mapping for a buffer of class `index`. Large ones start on a 2 MiB boundary and span
// whole huge pages, so transparent huge pages (where enabled for madvise) can back all of them:
// one fault per 2 MiB instead of 512.
static void *map_buffer(size_t index) {
    size_t size = mapped_bytes(index);
    if (size < HUGE_FROM) {
        void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return base == MAP_FAILED ? NULL : base;
    }
    char *raw = mmap(NULL, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *base = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (base > raw) munmap(raw, (size_t)(base - raw));
    size_t tail = (size_t)(raw + size + HUGE_PAGE - (base + size));
    if (tail) munmap(base + size, tail);
#ifdef MADV_HUGEPAGE
    madvise(base, size, MADV_HUGEPAGE);
#endif
    return base;
}

static void unmap_buffer(void *base, size_t index) { munmap(base, mapped_bytes(index)); }

void *score_buffer_alloc(size_t bytes) {
    if (bytes < SMALL_LIMIT) {
        void *base = NULL;
        if (posix_memalign(&base, HEADER, HEADER + (bytes ? bytes : 1)) != 0) return NULL;
        *(uint64_t *)base = SMALL_MARK;
        return (char *)base + HEADER;
    }
    size_t index = class_index(bytes);
    if (index >= CLASS_COUNT) return NULL;
    pthread_mutex_lock(&cache_lock);
    ensure_limit_locked();
    for (size_t candidate = index; candidate < index + 3 && candidate < CLASS_COUNT; candidate++) {
        cached_buffer *buffer = free_lists[candidate];
        if (!buffer) continue;
        free_lists[candidate] = buffer->next;
        size_t size = class_bytes(candidate);
        cached_bytes -= size;
        live_bytes += size;
        hits++;
        pthread_mutex_unlock(&cache_lock);
        return (char *)buffer + HEADER;
    }
    misses++;
    live_bytes += class_bytes(index);
    pthread_mutex_unlock(&cache_lock);
    void *base = map_buffer(index);
    if (!base) {
        pthread_mutex_lock(&cache_lock);
        live_bytes -= class_bytes(index);
        pthread_mutex_unlock(&cache_lock);
        return NULL;
    }
    *(uint64_t *)base = index;
    return (char *)base + HEADER;
}

void score_buffer_free(void *buffer) {
    if (!buffer) return;
    void *base = (char *)buffer - HEADER;
    uint64_t index = *(uint64_t *)base;
    if (index == SMALL_MARK) { free(base); return; }
    size_t size = class_bytes(index);
    pthread_mutex_lock(&cache_lock);
    ensure_limit_locked();
    live_bytes -= size;
    if (cached_bytes + size <= cache_limit) {
        cached_buffer *entry = (cached_buffer *)base;
        entry->next = free_lists[index];
        free_lists[index] = entry;
        cached_bytes += size;
        pthread_mutex_unlock(&cache_lock);
        return;
    }
    pthread_mutex_unlock(&cache_lock);
    unmap_buffer(base, index);
}

static void release_locked_until(size_t limit) {
    // Largest classes first: the fewest calls for the most memory.
    for (size_t index = CLASS_COUNT; index-- > 0 && cached_bytes > limit;) {
        while (free_lists[index] && cached_bytes > limit) {
            cached_buffer *buffer = free_lists[index];
            free_lists[index] = buffer->next;
            cached_bytes -= class_bytes(index);
            unmap_buffer(buffer, index);
        }
    }
}

void score_buffer_release_cached(void) {
    pthread_mutex_lock(&cache_lock);
    release_locked_until(0);
    pthread_mutex_unlock(&cache_lock);
}

void score_buffer_set_cache_limit(size_t bytes) {
    pthread_mutex_lock(&cache_lock);
    cache_limit = bytes == (size_t)-1 ? bytes - 1 : bytes;
    release_locked_until(cache_limit);
    pthread_mutex_unlock(&cache_lock);
}

score_buffer_stats score_buffer_statistics(void) {
    pthread_mutex_lock(&cache_lock);
    ensure_limit_locked();
    score_buffer_stats stats = { cached_bytes, live_bytes, cache_limit, hits, misses };
    pthread_mutex_unlock(&cache_lock);
    return stats;
}
