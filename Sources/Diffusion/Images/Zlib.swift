import Foundation

// A small zlib (RFC 1950) / DEFLATE (RFC 1951) codec for PNG, since Foundation on Linux has no
// zlib API and the package cannot link a system library. The compressor writes stored blocks, or
// one fixed- or dynamic-Huffman block over LZ77 tokens (hash chains, one-byte lazy matching); the
// decompressor reads all three block types, so it opens PNGs written by any encoder.

extension Zlib {
    static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// CRC-32 (ISO-HDLC, the one PNG and gzip use); `initial` continues an earlier checksum.
    public static func crc32<C: Collection>(_ bytes: C, initial: UInt32 = 0) -> UInt32 where C.Element == UInt8 {
        var c = ~initial
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return ~c
    }

    /// Adler-32 (zlib's trailer).
    public static func adler32(_ bytes: [UInt8]) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        var i = 0
        // 5552 is the most bytes that can be summed before b can overflow 32 bits.
        while i < bytes.count {
            let end = min(i + 5552, bytes.count)
            while i < end { a &+= UInt32(bytes[i]); b &+= a; i += 1 }
            a %= 65521; b %= 65521
        }
        return (b << 16) | a
    }
}

public enum ZlibError: Error, Equatable, CustomStringConvertible {
    case truncated
    case badHeader(String)
    case badData(String)
    case checksumMismatch(expected: UInt32, actual: UInt32)
    case tooLarge(limit: Int)

    public var description: String {
        switch self {
        case .truncated: return "zlib stream ends early"
        case .badHeader(let s): return "bad zlib header: \(s)"
        case .badData(let s): return "corrupt deflate data: \(s)"
        case let .checksumMismatch(e, a): return String(format: "Adler-32 mismatch: stored %08x, computed %08x", e, a)
        case .tooLarge(let limit): return "inflated data exceeds \(limit) bytes"
        }
    }
}

public enum Zlib {
    public enum Level: Sendable {
        /// Stored (uncompressed) deflate blocks.
        case stored
        /// One fixed-Huffman block with LZ77 matches.
        case fixedHuffman
        /// One dynamic-Huffman block (codes built for the data) with LZ77 matches, or stored
        /// blocks where that would be smaller.
        case dynamicHuffman
    }

    /// A zlib stream holding `data`.
    public static func compress(_ data: [UInt8], level: Level = .dynamicHuffman) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]  // deflate, 32 KiB window, no dictionary; (0x7801 % 31 == 0)
        switch level {
        case .stored: deflateStored(data, into: &out)
        case .fixedHuffman: deflateFixed(data, into: &out)
        case .dynamicHuffman:
            // Incompressible data (noise) comes out a little larger than stored; keep the smaller.
            deflateDynamic(data, into: &out)
            let storedSize = 2 + data.count + 5 * max(1, (data.count + 65534) / 65535)
            if out.count > storedSize {
                out = [0x78, 0x01]
                deflateStored(data, into: &out)
            }
        }
        let adler = adler32(data)
        out += [UInt8(adler >> 24), UInt8(adler >> 16 & 0xFF), UInt8(adler >> 8 & 0xFF), UInt8(adler & 0xFF)]
        return out
    }

    /// The data of a zlib stream; fails on a bad header, corrupt data, a wrong checksum, or more
    /// than `limit` bytes of output.
    public static func decompress(_ stream: [UInt8], limit: Int = 1 << 30) throws -> [UInt8] {
        guard stream.count >= 6 else { throw ZlibError.truncated }
        let cmf = stream[0], flg = stream[1]
        guard cmf & 0x0F == 8 else { throw ZlibError.badHeader("compression method \(cmf & 0x0F), not deflate") }
        guard cmf >> 4 <= 7 else { throw ZlibError.badHeader("window size 2^\(8 + Int(cmf >> 4))") }
        guard (UInt16(cmf) << 8 | UInt16(flg)) % 31 == 0 else { throw ZlibError.badHeader("check bits") }
        guard flg & 0x20 == 0 else { throw ZlibError.badHeader("preset dictionary") }
        var inflater = Inflater(stream, start: 2, limit: limit)
        try inflater.run()
        let end = (inflater.bitPosition + 7) / 8
        guard end + 4 <= stream.count else { throw ZlibError.truncated }
        let stored = stream[end..<end + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let actual = adler32(inflater.output)
        guard stored == actual else { throw ZlibError.checksumMismatch(expected: stored, actual: actual) }
        return inflater.output
    }

    // MARK: Compression

    static func deflateStored(_ data: [UInt8], into out: inout [UInt8]) {
        var offset = 0
        repeat {
            let n = min(65535, data.count - offset)
            let final: UInt8 = offset + n == data.count ? 1 : 0
            out.append(final)  // BFINAL, BTYPE 00, then pad to the byte boundary
            out += [UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8((~n >> 8) & 0xFF)]
            out += data[offset..<offset + n]
            offset += n
        } while offset < data.count
    }

    static let lengthBase: [Int] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59,
                                    67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let lengthExtra: [Int] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    static let distanceBase: [Int] = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769,
                                      1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    static let distanceExtra: [Int] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10,
                                       11, 11, 12, 12, 13, 13]

    /// Length (3…258) → length code index 0…28 (258 has its own code, 28).
    static let lengthCode: [UInt8] = {
        var table = [UInt8](repeating: 0, count: 259)
        for code in 0..<28 {
            for length in lengthBase[code]..<lengthBase[code + 1] { table[length] = UInt8(code) }
        }
        table[258] = 28
        return table
    }()

    static func distanceCode(_ d: Int) -> Int {
        var lo = 0, hi = 29
        while lo < hi {  // last base ≤ d
            let mid = (lo + hi + 1) / 2
            if distanceBase[mid] <= d { lo = mid } else { hi = mid - 1 }
        }
        return lo
    }

    struct BitWriter {
        var bytes: [UInt8]
        var buffer: UInt64 = 0
        var count = 0

        mutating func write(_ value: Int, bits: Int) {
            buffer |= UInt64(value) << UInt64(count)
            count += bits
            while count >= 8 { bytes.append(UInt8(buffer & 0xFF)); buffer >>= 8; count -= 8 }
        }

        /// A Huffman code, most significant bit first.
        mutating func writeCode(_ code: Int, length: Int) {
            var reversed = 0, c = code
            for _ in 0..<length { reversed = reversed << 1 | (c & 1); c >>= 1 }
            write(reversed, bits: length)
        }

        mutating func flush() {
            if count > 0 { bytes.append(UInt8(buffer & 0xFF)) }
            buffer = 0; count = 0
        }
    }

    /// The fixed literal/length code of symbol `s` (RFC 1951 §3.2.6).
    @inline(__always)
    static func writeFixedLiteral(_ s: Int, _ w: inout BitWriter) {
        switch s {
        case 0...143: w.writeCode(0x30 + s, length: 8)
        case 144...255: w.writeCode(0x190 + s - 144, length: 9)
        case 256...279: w.writeCode(s - 256, length: 7)
        default: w.writeCode(0xC0 + s - 280, length: 8)
        }
    }

    /// An LZ77 token: a literal byte (`length` 0) or a back-reference.
    struct Token {
        var length: UInt16   // 0 for a literal, else 3…258
        var value: UInt16    // the literal byte, or the distance 1…32767
    }

    /// Greedy-with-lazy-evaluation LZ77 over a 32 KiB window (hash chains of 3-byte prefixes).
    static func tokens(_ data: [UInt8]) -> [Token] {
        let n = data.count
        let windowSize = 32768, hashBits = 15, maxChain = 48, niceLength = 128
        var head = [Int32](repeating: -1, count: 1 << hashBits)
        var previous = [Int32](repeating: -1, count: windowSize)
        var out: [Token] = []
        out.reserveCapacity(n / 2)
        data.withUnsafeBufferPointer { p in
            @inline(__always) func hash(_ i: Int) -> Int {
                let v = UInt32(p[i]) << 16 | UInt32(p[i + 1]) << 8 | UInt32(p[i + 2])
                return Int((v &* 2_654_435_761) >> UInt32(32 - hashBits))
            }
            @inline(__always) func insert(_ i: Int) {
                guard i + 2 < n else { return }
                let h = hash(i)
                previous[i & (windowSize - 1)] = head[h]
                head[h] = Int32(i)
            }
            /// Longest match for position i among earlier positions in the window.
            func longestMatch(_ i: Int) -> (length: Int, distance: Int) {
                guard i + 2 < n else { return (0, 0) }
                var candidate = Int(head[hash(i)])
                var bestLength = 0, bestDistance = 0, chain = maxChain
                let maxLength = min(258, n - i)
                while candidate >= 0 && i - candidate < windowSize && chain > 0 {
                    if bestLength == 0 || p[candidate + bestLength] == p[i + bestLength] {
                        var length = 0
                        while length < maxLength && p[candidate + length] == p[i + length] { length += 1 }
                        if length > bestLength {
                            bestLength = length; bestDistance = i - candidate
                            if length >= niceLength || length == maxLength { break }
                        }
                    }
                    let next = Int(previous[candidate & (windowSize - 1)])
                    if next >= candidate { break }  // slot reused by a newer position
                    candidate = next
                    chain -= 1
                }
                return bestLength >= 3 ? (bestLength, bestDistance) : (0, 0)
            }
            @inline(__always) func literal(_ i: Int) { out.append(Token(length: 0, value: UInt16(p[i]))) }
            @inline(__always) func match(_ l: Int, _ d: Int) { out.append(Token(length: UInt16(l), value: UInt16(d))) }

            var i = 0
            var pending: (length: Int, distance: Int)? = nil  // a match found at i − 1, held back one byte
            while i < n {
                let (length, distance) = longestMatch(i)
                insert(i)
                if let held = pending {
                    if length > held.length {
                        literal(i - 1)  // the match starting here is longer
                        pending = (length, distance)
                        i += 1
                    } else {
                        match(held.length, held.distance)
                        // The match covers i − 1 … i − 2 + length; i − 1 and i are in the hash already.
                        let end = i - 1 + held.length
                        if i + 1 < end { for j in (i + 1)..<end { insert(j) } }
                        i = end
                        pending = nil
                    }
                } else if length >= niceLength {
                    match(length, distance)
                    for j in (i + 1)..<(i + length) { insert(j) }
                    i += length
                } else if length >= 3 {
                    pending = (length, distance)
                    i += 1
                } else {
                    literal(i)
                    i += 1
                }
            }
            if let held = pending { match(held.length, held.distance) }
        }
        return out
    }

    /// The literal/length symbol and distance code of each token, with their extra bits.
    @inline(__always)
    static func symbols(_ t: Token) -> (lit: Int, litExtra: (Int, Int), dist: Int, distExtra: (Int, Int)) {
        if t.length == 0 { return (Int(t.value), (0, 0), -1, (0, 0)) }
        let l = Int(t.length), d = Int(t.value)
        let lc = Int(lengthCode[l]), dc = distanceCode(d)
        return (257 + lc, (l - lengthBase[lc], lengthExtra[lc]), dc, (d - distanceBase[dc], distanceExtra[dc]))
    }

    static func deflateFixed(_ data: [UInt8], into out: inout [UInt8]) {
        var w = BitWriter(bytes: out)
        w.write(1, bits: 1)  // BFINAL
        w.write(1, bits: 2)  // BTYPE 01: fixed Huffman
        for t in tokens(data) {
            let s = symbols(t)
            writeFixedLiteral(s.lit, &w)
            if s.dist >= 0 {
                if s.litExtra.1 > 0 { w.write(s.litExtra.0, bits: s.litExtra.1) }
                w.writeCode(s.dist, length: 5)
                if s.distExtra.1 > 0 { w.write(s.distExtra.0, bits: s.distExtra.1) }
            }
        }
        writeFixedLiteral(256, &w)  // end of block
        w.flush()
        out = w.bytes
    }

    /// Code lengths (≤ `limit`) of a Huffman code for `frequencies`. Symbols with frequency 0 get
    /// length 0; at least two symbols always get a code, so the code is complete. Lengths over the
    /// limit are avoided by halving the frequencies and rebuilding (rarely needed).
    static func huffmanLengths(_ frequencies: [Int], limit: Int) -> [Int] {
        var freq = frequencies
        var used = freq.indices.filter { freq[$0] > 0 }
        for s in freq.indices where used.count < 2 && freq[s] == 0 {
            freq[s] = 1
            used.append(s)
        }
        while true {
            // Nodes 0..<used.count are leaves; parents are appended. A sorted-array "heap" is
            // enough for ≤ 286 symbols.
            var weight = used.map { freq[$0] }
            var parent = [Int](repeating: -1, count: used.count)
            var queue = Array(0..<used.count).sorted { (weight[$0], $0) > (weight[$1], $1) }  // smallest last
            while queue.count > 1 {
                let a = queue.removeLast(), b = queue.removeLast()
                let node = weight.count
                weight.append(weight[a] + weight[b])
                parent.append(-1)
                parent[a] = node; parent[b] = node
                let insertAt = queue.firstIndex { weight[$0] <= weight[node] } ?? queue.count
                queue.insert(node, at: insertAt)
            }
            var lengths = [Int](repeating: 0, count: frequencies.count)
            var longest = 0
            for (leaf, symbol) in used.enumerated() {
                var depth = 0, node = leaf
                while parent[node] >= 0 { node = parent[node]; depth += 1 }
                lengths[symbol] = depth
                longest = max(longest, depth)
            }
            if longest <= limit { return lengths }
            for s in used { freq[s] = max(1, freq[s] / 2) }
        }
    }

    /// Canonical codes for code lengths (RFC 1951 §3.2.2).
    static func canonicalCodes(_ lengths: [Int]) -> [Int] {
        var count = [Int](repeating: 0, count: 16)
        for l in lengths where l > 0 { count[l] += 1 }
        var next = [Int](repeating: 0, count: 16)
        var code = 0
        for bits in 1..<16 {
            code = (code + count[bits - 1]) << 1
            next[bits] = code
        }
        return lengths.map { l in
            guard l > 0 else { return 0 }
            defer { next[l] += 1 }
            return next[l]
        }
    }

    static func deflateDynamic(_ data: [UInt8], into out: inout [UInt8]) {
        let toks = tokens(data)
        var litFreq = [Int](repeating: 0, count: 286), distFreq = [Int](repeating: 0, count: 30)
        for t in toks {
            let s = symbols(t)
            litFreq[s.lit] += 1
            if s.dist >= 0 { distFreq[s.dist] += 1 }
        }
        litFreq[256] = 1
        let litLengths = huffmanLengths(litFreq, limit: 15), distLengths = huffmanLengths(distFreq, limit: 15)
        let nlit = max(257, (litLengths.lastIndex { $0 > 0 } ?? 0) + 1)
        let ndist = max(1, (distLengths.lastIndex { $0 > 0 } ?? 0) + 1)

        // Run-length code the concatenated lengths: 16 = repeat previous 3–6, 17 = 3–10 zeros,
        // 18 = 11–138 zeros.
        let all = Array(litLengths[0..<nlit]) + Array(distLengths[0..<ndist])
        var rle: [(symbol: Int, extra: Int, bits: Int)] = []
        var i = 0
        while i < all.count {
            let v = all[i]
            var run = 1
            while i + run < all.count && all[i + run] == v { run += 1 }
            if v == 0 && run >= 3 {
                var left = run
                while left >= 11 { let r = min(left, 138); rle.append((18, r - 11, 7)); left -= r }
                if left >= 3 { rle.append((17, left - 3, 3)); left = 0 }
                for _ in 0..<left { rle.append((0, 0, 0)) }
            } else if v != 0 && run >= 4 {
                rle.append((v, 0, 0))
                var left = run - 1
                while left >= 3 { let r = min(left, 6); rle.append((16, r - 3, 2)); left -= r }
                for _ in 0..<left { rle.append((v, 0, 0)) }
            } else {
                for _ in 0..<run { rle.append((v, 0, 0)) }
            }
            i += run
        }
        var clFreq = [Int](repeating: 0, count: 19)
        for r in rle { clFreq[r.symbol] += 1 }
        let clLengths = huffmanLengths(clFreq, limit: 7)
        let order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
        let nclen = max(4, (order.lastIndex { clLengths[$0] > 0 } ?? 0) + 1)

        let litCodes = canonicalCodes(litLengths), distCodes = canonicalCodes(distLengths)
        let clCodes = canonicalCodes(clLengths)
        var w = BitWriter(bytes: out)
        w.write(1, bits: 1)  // BFINAL
        w.write(2, bits: 2)  // BTYPE 10: dynamic Huffman
        w.write(nlit - 257, bits: 5)
        w.write(ndist - 1, bits: 5)
        w.write(nclen - 4, bits: 4)
        for k in 0..<nclen { w.write(clLengths[order[k]], bits: 3) }
        for r in rle {
            w.writeCode(clCodes[r.symbol], length: clLengths[r.symbol])
            if r.bits > 0 { w.write(r.extra, bits: r.bits) }
        }
        for t in toks {
            let s = symbols(t)
            w.writeCode(litCodes[s.lit], length: litLengths[s.lit])
            if s.dist >= 0 {
                if s.litExtra.1 > 0 { w.write(s.litExtra.0, bits: s.litExtra.1) }
                w.writeCode(distCodes[s.dist], length: distLengths[s.dist])
                if s.distExtra.1 > 0 { w.write(s.distExtra.0, bits: s.distExtra.1) }
            }
        }
        w.writeCode(litCodes[256], length: litLengths[256])
        w.flush()
        out = w.bytes
    }
}

// MARK: Decompression

/// DEFLATE decoder (canonical Huffman decoding in the style of zlib's `puff`).
fileprivate struct Inflater {
    let input: [UInt8]
    var bitPosition: Int
    var output: [UInt8] = []
    let limit: Int

    init(_ input: [UInt8], start: Int, limit: Int) {
        self.input = input
        self.bitPosition = start * 8
        self.limit = limit
    }

    /// A canonical Huffman code: number of codes of each length, and symbols in code order.
    struct Huffman {
        var counts = [Int](repeating: 0, count: 16)
        var symbols: [Int]

        init(lengths: [Int]) throws {
            symbols = [Int](repeating: 0, count: lengths.count)
            for l in lengths { counts[l] += 1 }
            var left = 1
            for len in 1..<16 {
                left <<= 1
                left -= counts[len]
                if left < 0 { throw ZlibError.badData("over-subscribed Huffman code") }
            }
            var offsets = [Int](repeating: 0, count: 16)
            for len in 1..<15 { offsets[len + 1] = offsets[len] + counts[len] }
            for (symbol, l) in lengths.enumerated() where l != 0 {
                symbols[offsets[l]] = symbol
                offsets[l] += 1
            }
        }
    }

    @inline(__always)
    mutating func bit() throws -> Int {
        let byte = bitPosition >> 3
        guard byte < input.count else { throw ZlibError.truncated }
        let b = Int(input[byte] >> UInt8(bitPosition & 7)) & 1
        bitPosition += 1
        return b
    }

    @inline(__always)
    mutating func bits(_ n: Int) throws -> Int {
        var v = 0
        for i in 0..<n { v |= try bit() << i }
        return v
    }

    mutating func decode(_ h: Huffman) throws -> Int {
        var code = 0, first = 0, index = 0
        for len in 1..<16 {
            code |= try bit()
            let count = h.counts[len]
            if code - count < first { return h.symbols[index + (code - first)] }
            index += count
            first += count
            first <<= 1
            code <<= 1
        }
        throw ZlibError.badData("invalid Huffman code")
    }

    static let fixedLiterals = try! Huffman(lengths: (0..<288).map { $0 < 144 ? 8 : $0 < 256 ? 9 : $0 < 280 ? 7 : 8 })
    static let fixedDistances = try! Huffman(lengths: [Int](repeating: 5, count: 30))

    mutating func run() throws {
        var last = false
        while !last {
            last = try bit() == 1
            switch try bits(2) {
            case 0: try stored()
            case 1: try codes(Inflater.fixedLiterals, Inflater.fixedDistances)
            case 2: try dynamic()
            default: throw ZlibError.badData("block type 3")
            }
        }
    }

    mutating func stored() throws {
        bitPosition = (bitPosition + 7) & ~7
        let p = bitPosition >> 3
        guard p + 4 <= input.count else { throw ZlibError.truncated }
        let len = Int(input[p]) | Int(input[p + 1]) << 8
        let nlen = Int(input[p + 2]) | Int(input[p + 3]) << 8
        guard len == ~nlen & 0xFFFF else { throw ZlibError.badData("stored block length check") }
        guard p + 4 + len <= input.count else { throw ZlibError.truncated }
        guard output.count + len <= limit else { throw ZlibError.tooLarge(limit: limit) }
        output += input[(p + 4)..<(p + 4 + len)]
        bitPosition = (p + 4 + len) * 8
    }

    mutating func codes(_ literals: Huffman, _ distances: Huffman) throws {
        while true {
            let symbol = try decode(literals)
            if symbol < 256 {
                guard output.count < limit else { throw ZlibError.tooLarge(limit: limit) }
                output.append(UInt8(symbol))
            } else if symbol == 256 {
                return
            } else {
                let lc = symbol - 257
                guard lc < 29 else { throw ZlibError.badData("length symbol \(symbol)") }
                let length = Zlib.lengthBase[lc] + (try bits(Zlib.lengthExtra[lc]))
                let dc = try decode(distances)
                guard dc < 30 else { throw ZlibError.badData("distance symbol \(dc)") }
                let distance = Zlib.distanceBase[dc] + (try bits(Zlib.distanceExtra[dc]))
                guard distance <= output.count else { throw ZlibError.badData("distance \(distance) before the start") }
                guard output.count + length <= limit else { throw ZlibError.tooLarge(limit: limit) }
                let start = output.count - distance
                for k in 0..<length { output.append(output[start + k]) }
            }
        }
    }

    static let codeLengthOrder = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]

    mutating func dynamic() throws {
        let nlen = try bits(5) + 257, ndist = try bits(5) + 1, ncode = try bits(4) + 4
        guard nlen <= 286 && ndist <= 30 else { throw ZlibError.badData("too many length or distance codes") }
        var codeLengths = [Int](repeating: 0, count: 19)
        for i in 0..<ncode { codeLengths[Inflater.codeLengthOrder[i]] = try bits(3) }
        let lengthCode = try Huffman(lengths: codeLengths)
        var lengths: [Int] = []
        while lengths.count < nlen + ndist {
            let symbol = try decode(lengthCode)
            switch symbol {
            case 0..<16: lengths.append(symbol)
            case 16:
                guard let previous = lengths.last else { throw ZlibError.badData("repeat with no previous length") }
                lengths += [Int](repeating: previous, count: 3 + (try bits(2)))
            case 17: lengths += [Int](repeating: 0, count: 3 + (try bits(3)))
            default: lengths += [Int](repeating: 0, count: 11 + (try bits(7)))
            }
        }
        guard lengths.count == nlen + ndist else { throw ZlibError.badData("code lengths overrun") }
        guard lengths[256] != 0 else { throw ZlibError.badData("no end-of-block code") }
        try codes(Huffman(lengths: Array(lengths[0..<nlen])), Huffman(lengths: Array(lengths[nlen...])))
    }
}
