import XCTest
import Kernels

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
}
