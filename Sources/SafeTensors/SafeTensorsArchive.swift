import Foundation

/// A checkpoint that is either one `.safetensors` file or a sharded set described by a
/// `*.safetensors.index.json` file:
///
///     {"metadata": {"total_size": 123}, "weight_map": {"key": "model-00001-of-00002.safetensors", ...}}
///
/// Shards are opened on first use of one of their keys. When a shard is opened, every key the
/// index assigns to it must exist in it, so a stale or mismatched index fails loudly and names
/// the index, the key and the shard. Call `validateAllShards()` to check everything up front.
public final class SafeTensorsArchive: TensorSource, @unchecked Sendable {
    /// The file that was opened: the `.safetensors` file or the index.
    public let url: URL
    public let names: [String]
    /// The single file's `__metadata__`, or the index's `metadata` (numbers and booleans as text).
    public let metadata: [String: String]
    /// Shard file names, sorted (one entry for a single file).
    public let shardNames: [String]

    private let directory: URL
    private let shardForKey: [String: String]
    private let lock = NSLock()
    /// Opened shards by file name; guarded by `lock`.
    private var openedShards: [String: SafeTensorsFile] = [:]

    public var isSharded: Bool { url.lastPathComponent.hasSuffix(".index.json") }

    public init(url: URL) throws {
        self.url = url
        self.directory = url.deletingLastPathComponent()

        if url.lastPathComponent.hasSuffix(".index.json") {
            let index = try ShardIndex(url: url)
            shardForKey = index.shardForKey
            metadata = index.metadata
            shardNames = Set(index.shardForKey.values).sorted()
            // Checking existence is cheap and reads nothing; a missing shard is better found now.
            for shard in shardNames where !FileManager.default.fileExists(atPath: directory.appendingPathComponent(shard).path) {
                throw SafeTensorsError.shardNotFound(indexFile: url.path, shard: shard)
            }
        } else {
            let file = try SafeTensorsFile(url: url)
            let shard = url.lastPathComponent
            shardForKey = Dictionary(uniqueKeysWithValues: file.names.map { ($0, shard) })
            metadata = file.metadata
            shardNames = [shard]
            openedShards[shard] = file
        }
        names = shardForKey.keys.sorted()
    }

    public convenience init(path: String) throws {
        try self.init(url: URL(fileURLWithPath: path))
    }

    public func contains(_ name: String) -> Bool { shardForKey[name] != nil }

    public func info(_ name: String) throws -> TensorInfo { try file(containing: name).info(name) }
    public func floats(_ name: String) throws -> [Float] { try file(containing: name).floats(name) }
    public func int64s(_ name: String) throws -> [Int64] { try file(containing: name).int64s(name) }

    public func withRawBytes<Result>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result {
        try file(containing: name).withRawBytes(name, body)
    }

    /// Opens and checks every shard now instead of on first use.
    public func validateAllShards() throws {
        for shard in shardNames { _ = try openShard(shard) }
    }

    /// The shard file holding `name`, opened (and checked against the index) if needed.
    public func file(containing name: String) throws -> SafeTensorsFile {
        guard let shard = shardForKey[name] else { throw SafeTensorsError.keyNotFound(file: url.path, key: name) }
        return try openShard(shard)
    }

    private func openShard(_ shard: String) throws -> SafeTensorsFile {
        lock.lock()
        defer { lock.unlock() }
        if let file = openedShards[shard] { return file }

        let file = try SafeTensorsFile(url: directory.appendingPathComponent(shard))
        let expectedKeys = shardForKey.filter { $0.value == shard }.keys.sorted()
        for key in expectedKeys where !file.contains(key) {
            throw SafeTensorsError.keyMissingFromShard(indexFile: url.path, key: key, shard: shard)
        }
        openedShards[shard] = file
        return file
    }
}

/// The parsed contents of a `*.safetensors.index.json` file.
private struct ShardIndex {
    var shardForKey: [String: String] = [:]
    var metadata: [String: String] = [:]

    init(url: URL) throws {
        let file = url.path
        func invalid(_ reason: String) -> SafeTensorsError { .invalidIndex(file: file, reason: reason) }

        let bytes: [UInt8]
        do {
            bytes = Array(try Data(contentsOf: url))
        } catch {
            throw SafeTensorsError.cannotOpen(file: file, reason: error.localizedDescription)
        }
        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes)
        } catch let error as JSONParseError {
            throw invalid("not valid JSON: \(error.description)")
        }
        guard case .object(let members) = json else { throw invalid("expected a JSON object") }

        var sawWeightMap = false
        for (key, value) in members {
            switch key {
            case "weight_map":
                guard !sawWeightMap else { throw invalid("duplicate key 'weight_map'") }
                sawWeightMap = true
                guard case .object(let entries) = value else { throw invalid("'weight_map' must be an object") }
                for (tensor, shardValue) in entries {
                    guard case .string(let shard) = shardValue, !shard.isEmpty else {
                        throw invalid("weight_map entry '\(tensor)' must be a shard file name")
                    }
                    guard !shard.hasPrefix("/"), !shard.split(separator: "/").contains("..") else {
                        throw invalid("shard '\(shard)' of '\(tensor)' must be a relative path inside the index's folder")
                    }
                    guard shardForKey.updateValue(shard, forKey: tensor) == nil else {
                        throw invalid("duplicate weight_map key '\(tensor)'")
                    }
                }
            case "metadata":
                guard case .object(let entries) = value else { throw invalid("'metadata' must be an object") }
                for (name, entry) in entries {
                    // Hugging Face writes {"total_size": <number>}, so scalars are kept as text.
                    switch entry {
                    case .string(let string): metadata[name] = string
                    case .integer(let integer): metadata[name] = String(integer)
                    case .double(let double): metadata[name] = String(double)
                    case .bool(let bool): metadata[name] = String(bool)
                    default: throw invalid("metadata '\(name)' must be a string, number or boolean")
                    }
                }
            default:
                continue  // unknown top-level keys are ignored
            }
        }
        guard sawWeightMap else { throw invalid("missing 'weight_map'") }
    }
}
