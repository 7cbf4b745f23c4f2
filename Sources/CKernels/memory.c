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
// heap fragments and whose thread arenas return memory on their own schedule).
//
// A miss may take a cached buffer up to seven classes larger (less than twice the size) before
// mapping a new one: the sizes of a backward pass differ from the forward's, and a cached buffer
// that is already resident costs nothing more, where a fresh mapping adds its size to the peak.
// (Replaying the allocations of an SD 1.5 training step, seven gave the lowest peak: with more,
// small requests use up the large buffers that large requests then have to map anew.)
//
// Every buffer has a 64-byte header just before its data (its class, and while it is cached the
// next cached buffer of the class), so free needs no size and the data stays 64-byte aligned.
// Buffers of 2 MiB and more start their data on a 2 MiB boundary after a 4 KiB page that holds
// the header, so that their whole 2 MiB spans can be transparent huge pages (one fault per 2 MiB
// instead of 512; the tail under 2 MiB keeps 4 KiB pages). They are advised for them only when
// SCORE_HUGE_PAGES=1 asks: in a VM that reports free memory to its host in 2 MiB blocks (the
// project's Firecracker machines), every fresh huge page is one the host must back anew, and an
// SD 1.5 training step spent 11.8 s in the kernel with them against 3.2 s without. A fresh
// mapping is faulted in by one MADV_POPULATE_WRITE call over the bytes requested (the caller
// writes all of them anyway) instead of a trap per page inside the kernels that first write it.

#define HEADER 64
#define SMALL_LIMIT ((size_t)128 << 10)
#define MIN_EXPONENT 17            // 2^17 = 128 KiB, glibc's default mmap threshold
#define CLASSES_PER_OCTAVE 8
#define OCTAVES 30                 // up to 2^48 bytes
#define CLASS_COUNT (OCTAVES * CLASSES_PER_OCTAVE)
#define LARGER_CLASSES_TAKEN 7     // a miss takes a cached buffer of up to 7 classes above (< 2×)
#define SMALL_MARK ((uint64_t)-1)
#define PAGE ((size_t)4 << 10)
#define HUGE_PAGE ((size_t)2 << 20)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23     // Linux 5.14; older headers lack the name
#endif

// The header of a buffer: its class, and while it is cached the next cached buffer of the class.
typedef struct cached_buffer { uint64_t index; struct cached_buffer *next; } cached_buffer;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static cached_buffer *free_lists[CLASS_COUNT];
static size_t cached_bytes, live_bytes, peak_bytes, mapped_total;
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

static int huge_pages = -1;   // -1: not read from the environment yet

static int huge_pages_enabled(void) {
    int enabled = __atomic_load_n(&huge_pages, __ATOMIC_RELAXED);
    if (enabled < 0) {
        const char *text = getenv("SCORE_HUGE_PAGES");
        enabled = text && text[0] == '1';
        __atomic_store_n(&huge_pages, enabled, __ATOMIC_RELAXED);
    }
    return enabled;
}

void score_buffer_set_huge_pages(int enabled) { __atomic_store_n(&huge_pages, enabled ? 1 : 0, __ATOMIC_RELAXED); }
int score_buffer_huge_pages(void) { return huge_pages_enabled(); }

static size_t round_up(size_t bytes, size_t unit) { return (bytes + unit - 1) / unit * unit; }
static int is_huge_layout(size_t index) { return class_bytes(index) >= HUGE_PAGE; }
// Where a buffer's data starts in its mapping, and the mapping's length.
static size_t data_offset(size_t index) { return is_huge_layout(index) ? PAGE : HEADER; }
static size_t mapped_bytes(size_t index) { return round_up(data_offset(index) + class_bytes(index), PAGE); }

static void note_peak_locked(void) {
    if (live_bytes + cached_bytes > peak_bytes) peak_bytes = live_bytes + cached_bytes;
}

// A fresh mapping for a buffer of class `index`, the first `bytes` of its data faulted in;
// returns the data.
static char *map_buffer(size_t index, size_t bytes) {
    size_t size = mapped_bytes(index), offset = data_offset(index);
    char *data;
    if (!is_huge_layout(index)) {
        char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) return NULL;
        data = base + offset;
    } else {
        // Over-map by one huge page, then cut what lies before the header page and after the end.
        char *raw = mmap(NULL, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) return NULL;
        data = (char *)(((uintptr_t)raw + offset + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
        char *base = data - offset;
        if (base > raw) munmap(raw, (size_t)(base - raw));
        size_t tail = (size_t)(raw + size + HUGE_PAGE - (base + size));
        if (tail) munmap(base + size, tail);
#ifdef MADV_HUGEPAGE
        if (huge_pages_enabled()) madvise(data, class_bytes(index) / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE);
#endif
    }
    static int populate_unsupported;   // a kernel before 5.14 answers EINVAL: touch on first write
    if (!__atomic_load_n(&populate_unsupported, __ATOMIC_RELAXED)) {
        char *first = (char *)((uintptr_t)data & ~(uintptr_t)(PAGE - 1));
        if (madvise(first, round_up((size_t)(data - first) + bytes, PAGE), MADV_POPULATE_WRITE) != 0)
            __atomic_store_n(&populate_unsupported, 1, __ATOMIC_RELAXED);
    }
    return data;
}

static void unmap_buffer(void *data, size_t index) {
    munmap((char *)data - data_offset(index), mapped_bytes(index));
}

static cached_buffer *header_of(void *data) { return (cached_buffer *)((char *)data - HEADER); }
static void *data_of(cached_buffer *header) { return (char *)header + HEADER; }

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
    for (size_t candidate = index; candidate <= index + LARGER_CLASSES_TAKEN && candidate < CLASS_COUNT; candidate++) {
        cached_buffer *buffer = free_lists[candidate];
        if (!buffer) continue;
        free_lists[candidate] = buffer->next;
        size_t size = class_bytes(candidate);
        cached_bytes -= size;
        live_bytes += size;
        hits++;
        pthread_mutex_unlock(&cache_lock);
        return data_of(buffer);
    }
    misses++;
    live_bytes += class_bytes(index);
    mapped_total += mapped_bytes(index);
    note_peak_locked();
    pthread_mutex_unlock(&cache_lock);
    char *data = map_buffer(index, bytes);
    if (!data) {
        pthread_mutex_lock(&cache_lock);
        live_bytes -= class_bytes(index);
        mapped_total -= mapped_bytes(index);
        pthread_mutex_unlock(&cache_lock);
        return NULL;
    }
    header_of(data)->index = index;
    return data;
}

void score_buffer_free(void *buffer) {
    if (!buffer) return;
    cached_buffer *header = header_of(buffer);
    uint64_t index = header->index;
    if (index == SMALL_MARK) { free(header); return; }
    size_t size = class_bytes(index);
    pthread_mutex_lock(&cache_lock);
    ensure_limit_locked();
    live_bytes -= size;
    if (cached_bytes + size <= cache_limit) {
        header->next = free_lists[index];
        free_lists[index] = header;
        cached_bytes += size;
        pthread_mutex_unlock(&cache_lock);
        return;
    }
    pthread_mutex_unlock(&cache_lock);
    unmap_buffer(buffer, index);
}

static void release_locked_until(size_t limit) {
    // Largest classes first: the fewest calls for the most memory.
    for (size_t index = CLASS_COUNT; index-- > 0 && cached_bytes > limit;) {
        while (free_lists[index] && cached_bytes > limit) {
            cached_buffer *buffer = free_lists[index];
            free_lists[index] = buffer->next;
            cached_bytes -= class_bytes(index);
            unmap_buffer(data_of(buffer), index);
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
    score_buffer_stats stats = { cached_bytes, live_bytes, cache_limit, hits, misses, mapped_total, peak_bytes };
    pthread_mutex_unlock(&cache_lock);
    return stats;
}
