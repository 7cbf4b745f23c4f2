import XCTest
import Kernels
#if canImport(Glibc)
import Glibc
#endif

final class BufferCacheTests: XCTestCase {
    /// A freed large buffer is handed to the next request of its size class instead of a fresh
    /// mapping; buffers are 64-byte aligned; releasing empties the cache.
    func testFreedBuffersAreReusedAlignedAndReleased() {
        let count = 3_000_000   // 12 MB
        let first = BufferCache.allocate(floats: count)
        XCTAssertEqual(Int(bitPattern: first) % 64, 0)
        first[count - 1] = 7
        BufferCache.free(first)
        let before = BufferCache.statistics
        XCTAssertGreaterThanOrEqual(before.cachedBytes, count * 4)
        let second = BufferCache.allocate(floats: count - 1000)   // same class
        XCTAssertEqual(second, first)
        XCTAssertEqual(BufferCache.statistics.hits, before.hits + 1)
        BufferCache.free(second)
        BufferCache.releaseCached()
        XCTAssertEqual(BufferCache.statistics.cachedBytes, 0)

        let small = BufferCache.allocate(floats: 10)
        XCTAssertEqual(Int(bitPattern: small) % 64, 0)
        BufferCache.free(small)
    }

    func testLimitZeroKeepsNothing() {
        let saved = BufferCache.limitBytes
        defer { BufferCache.limitBytes = saved }
        BufferCache.limitBytes = 0
        let buffer = BufferCache.allocate(floats: 1 << 20)
        BufferCache.free(buffer)
        XCTAssertEqual(BufferCache.statistics.cachedBytes, 0)
    }

    /// A miss takes a cached buffer of up to seven classes above (less than twice the size)
    /// before mapping a new one; a buffer more than twice the request stays cached.
    func testAMissTakesACachedBufferUpToTwiceItsSize() {
        BufferCache.releaseCached()
        let large = BufferCache.allocate(floats: 3_000_000)   // 12 MB: the 12 MiB class
        BufferCache.free(large)
        let before = BufferCache.statistics
        let smaller = BufferCache.allocate(floats: 1_750_000)   // 7 MB: six classes below
        XCTAssertEqual(smaller, large)
        XCTAssertEqual(BufferCache.statistics.hits, before.hits + 1)
        XCTAssertEqual(BufferCache.statistics.mappedBytes, before.mappedBytes, "a hit maps nothing")
        BufferCache.free(smaller)

        let tooSmall = BufferCache.allocate(floats: 1_250_000)   // 5 MB: ten classes below
        XCTAssertNotEqual(tooSmall, large)
        let after = BufferCache.statistics
        XCTAssertEqual(after.misses, before.misses + 1)
        XCTAssertGreaterThanOrEqual(after.mappedBytes - before.mappedBytes, 5_000_000)
        XCTAssertGreaterThanOrEqual(after.cachedBytes, 12_000_000, "the 12 MiB buffer stays cached")
        BufferCache.free(tooSmall)
        BufferCache.releaseCached()
    }

    /// Buffers of 2 MiB and more start on a 2 MiB boundary (whole transparent huge pages);
    /// smaller ones on 64 bytes. Both are usable to their last element.
    func testLargeBuffersStartOnAHugePageBoundary() {
        for floats in [600_000, 1_000_000, 5_242_880] {   // 2.4 MB, 4 MB, exactly 20 MiB
            let buffer = BufferCache.allocate(floats: floats)
            XCTAssertEqual(Int(bitPattern: buffer) % (2 << 20), 0, "\(floats) floats")
            buffer[0] = 1
            buffer[floats - 1] = 2
            XCTAssertEqual(buffer[floats - 1], 2)
            BufferCache.free(buffer)
        }
        let medium = BufferCache.allocate(floats: 100_000)   // 400 KB
        XCTAssertEqual(Int(bitPattern: medium) % 64, 0)
        medium[99_999] = 3
        BufferCache.free(medium)
        BufferCache.releaseCached()
    }

    /// Huge pages are advised only when asked for: the kernel marks an advised mapping with
    /// "hg" in its VmFlags (/proc/self/smaps), whatever the system's THP setting.
    func testHugePagesAreAdvisedOnlyWhenAskedFor() throws {
        #if os(Linux)
        let saved = BufferCache.hugePages
        defer { BufferCache.hugePages = saved; BufferCache.releaseCached() }
        func advised(_ hugePages: Bool) throws -> Bool {
            BufferCache.releaseCached()
            BufferCache.hugePages = hugePages
            let buffer = BufferCache.allocate(floats: 4 << 20)   // 16 MiB
            defer { BufferCache.free(buffer) }
            return try XCTUnwrap(vmFlags(containing: UInt(bitPattern: buffer))).contains("hg")
        }
        XCTAssertFalse(try advised(false))
        XCTAssertTrue(try advised(true))
        #else
        throw XCTSkip("VmFlags are read from Linux's /proc/self/smaps")
        #endif
    }

    /// A fresh buffer arrives faulted in over the bytes requested: writing all of it takes no
    /// page faults (MADV_POPULATE_WRITE, Linux 5.14 and later). 1.6 MB in 4 KiB pages would take
    /// 391 faults; 32 MiB in huge pages 16.
    func testFreshBuffersArriveFaultedIn() throws {
        BufferCache.releaseCached()
        defer { BufferCache.releaseCached() }
        for floats in [400_000, 8 << 20] {
            let before = BufferCache.statistics.misses
            let buffer = BufferCache.allocate(floats: floats)
            XCTAssertEqual(BufferCache.statistics.misses, before + 1)
            let faultsBefore = minorFaults()
            buffer.initialize(repeating: 1, count: floats)
            XCTAssertLessThan(minorFaults() - faultsBefore, 8, "\(floats) floats")
            BufferCache.free(buffer)
        }
    }

    /// The cache keeps at most its limit; what would go over is returned to the system, and the
    /// peak counts what was held at once.
    func testCacheLimitIsRespectedAndThePeakCounted() {
        let saved = BufferCache.limitBytes
        defer { BufferCache.limitBytes = saved; BufferCache.releaseCached() }
        BufferCache.releaseCached()
        BufferCache.limitBytes = 10 << 20
        let buffers = (0..<3).map { _ in BufferCache.allocate(floats: 1 << 20) }   // 4 MiB each
        XCTAssertGreaterThanOrEqual(BufferCache.statistics.peakBytes, 12 << 20)
        buffers.forEach(BufferCache.free)
        XCTAssertEqual(BufferCache.statistics.cachedBytes, 8 << 20, "two of the three kept")
        BufferCache.limitBytes = 4 << 20
        XCTAssertEqual(BufferCache.statistics.cachedBytes, 4 << 20, "lowering the limit releases at once")
    }

    private func minorFaults() -> Int {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return usage.ru_minflt
    }

    /// The VmFlags of the mapping in /proc/self/smaps that holds `address`.
    private func vmFlags(containing address: UInt) -> [String]? {
        // Read to the end: /proc files report a size of 0, so a read sized by stat gets nothing.
        guard let data = FileHandle(forReadingAtPath: "/proc/self/smaps")?.readDataToEndOfFile(),
              let text = String(data: data, encoding: .utf8) else { return nil }
        var inside = false
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if let range = fields.first, range.contains("-"), fields.count >= 5 {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                if bounds.count == 2 { inside = bounds[0] <= address && address < bounds[1]; continue }
            }
            if inside, line.hasPrefix("VmFlags:") { return fields.dropFirst().map(String.init) }
        }
        return nil
    }
}

