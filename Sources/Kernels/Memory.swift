import CKernels
import Foundation

/// The process's peak resident set size in MB (`VmHWM` of /proc/self/status), nil where there is none.
public func peakResidentMegabytes() -> Double? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        // "VmHWM:\t 123456 kB": tabs and spaces, as many as the number's width leaves.
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard fields.count >= 2, let kilobytes = Double(fields[1]) else { return nil }
        return kilobytes / 1024
    }
    return nil
}

/// The engine's buffer cache (Sources/CKernels/memory.c): tensor storage of 128 KiB and more is
/// kept when freed and handed to the next request of its size class or of one of the seven
/// classes below (a request never takes twice its size), so a training step reuses the previous
/// step's activation buffers instead of mapping and page-faulting fresh ones.
public enum BufferCache {
    /// A 64-byte aligned buffer for `count` floats; release it with `free`.
    @inline(__always)
    public static func allocate(floats count: Int) -> UnsafeMutablePointer<Float> {
        guard let raw = score_buffer_alloc(max(count, 1) * MemoryLayout<Float>.stride) else {
            fatalError("out of memory: \(count) floats (\(count * 4 >> 20) MiB)")
        }
        return raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    @inline(__always)
    public static func free(_ pointer: UnsafeMutablePointer<Float>) { score_buffer_free(pointer) }

    /// Returns every cached buffer to the system (after a large job, before a long idle phase).
    public static func releaseCached() { score_buffer_release_cached() }

    /// The most bytes kept cached (default: SCORE_BUFFER_CACHE_MB, or half the physical memory); 0 turns caching off.
    public static var limitBytes: Int {
        get { Int(clamping: score_buffer_statistics().cache_limit) }
        set { score_buffer_set_cache_limit(size_t(max(0, newValue))) }
    }

    /// Whether fresh buffers of 2 MiB and more are advised for transparent huge pages (default:
    /// off unless SCORE_HUGE_PAGES=1; on VMs that hand freed memory back to their host they cost
    /// far more kernel time than they save, docs/BENCHMARKS.md).
    public static var hugePages: Bool {
        get { score_buffer_huge_pages() != 0 }
        set { score_buffer_set_huge_pages(newValue ? 1 : 0) }
    }

    /// Bytes cached now, bytes of large buffers in use, the large requests served from the cache
    /// and mapped fresh since the start, the bytes of those fresh mappings, and the most bytes
    /// of large buffers held at once (in use plus cached).
    public static var statistics: (cachedBytes: Int, liveBytes: Int, hits: Int, misses: Int, mappedBytes: Int, peakBytes: Int) {
        let s = score_buffer_statistics()
        return (Int(s.cached_bytes), Int(s.live_bytes), Int(s.hits), Int(s.misses), Int(s.mapped_bytes), Int(s.peak_bytes))
    }
}
