#ifndef SCORE_MEMORY_H
#define SCORE_MEMORY_H
/// Asks the C allocator to keep freed large blocks for reuse instead of returning them to the
/// kernel (glibc only; a no-op elsewhere). Idempotent.
void score_keep_freed_memory(void);
#endif
