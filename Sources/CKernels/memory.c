#include "score_memory.h"
#ifdef __GLIBC__
#include <malloc.h>
#endif

// glibc hands blocks over 128 KiB straight to mmap and unmaps them on free, so each training
// step page-faults its activations into freshly zeroed pages (about a tenth of a UNet step).
void score_keep_freed_memory(void) {
#ifdef __GLIBC__
    static int done = 0;
    if (done) return;
    done = 1;
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}
