import Foundation
import XCTest
import SafeTensors

final class ArchiveTests: SafeTensorsTestCase {
    private let firstShard = "model-00001-of-00002.safetensors"
    private let secondShard = "model-00002-of-00002.safetensors"

    /// Two shards plus an index; `extraWeightMap` adds raw `"key": "shard"` pairs to the map.
    @discardableResult
    private func makeShardedCheckpoint(extraWeightMap: String = "") throws -> URL {
        try writeSafeTensors([
            (name: "encoder.weight", shape: [2, 2], values: [1, 2, 3, 4]),
            (name: "encoder.bias", shape: [2], values: [0.5, -0.5]),
        ], metadata: ["format": "pt"], to: url(firstShard))
        try writeSafeTensors([TensorToWrite(name: "decoder.ids", shape: [3], data: .int64s([7, 8, 9])),
                              TensorToWrite(name: "decoder.weight", shape: [1], data: .floats([6], storedAs: .f16))],
                             to: url(secondShard))
        let index = """
            {"metadata": {"total_size": 42, "format": "pt"},
             "weight_map": {"encoder.weight": "\(firstShard)", "encoder.bias": "\(firstShard)",
                            "decoder.ids": "\(secondShard)", "decoder.weight": "\(secondShard)"\(extraWeightMap)}}
            """
        let indexURL = url("model.safetensors.index.json")
        try Data(index.utf8).write(to: indexURL)
        return indexURL
    }

    func testSingleFileArchive() throws {
        let fileURL = url("single.safetensors")
        try writeSafeTensors([(name: "w", shape: [2], values: [1, 2])], metadata: ["k": "v"], to: fileURL)
        let archive = try SafeTensorsArchive(url: fileURL)
        XCTAssertFalse(archive.isSharded)
        XCTAssertEqual(archive.names, ["w"])
        XCTAssertEqual(archive.metadata, ["k": "v"])
        XCTAssertEqual(archive.shardNames, ["single.safetensors"])
        XCTAssertEqual(try archive.floats("w"), [1, 2])
        assertThrows(.keyNotFound(file: fileURL.path, key: "x"), mentions: ["single.safetensors", "'x'"]) { try archive.floats("x") }
    }

    func testShardedIndexLoads() throws {
        let indexURL = try makeShardedCheckpoint()
        let archive = try SafeTensorsArchive(url: indexURL)
        XCTAssertTrue(archive.isSharded)
        XCTAssertEqual(archive.names, ["decoder.ids", "decoder.weight", "encoder.bias", "encoder.weight"])
        XCTAssertEqual(archive.metadata, ["total_size": "42", "format": "pt"])
        XCTAssertEqual(archive.shardNames, [firstShard, secondShard])
        XCTAssertEqual(try archive.floats("encoder.weight"), [1, 2, 3, 4])
        XCTAssertEqual(try archive.info("encoder.bias").shape, [2])
        XCTAssertEqual(try archive.int64s("decoder.ids"), [7, 8, 9])
        XCTAssertEqual(try archive.floats("decoder.weight"), [6])
        XCTAssertEqual(try archive.withRawBytes("decoder.weight") { Array($0) }, [0x00, 0x46])
        XCTAssertEqual(try archive.file(containing: "decoder.ids").url.lastPathComponent, secondShard)
        XCTAssertNoThrow(try archive.validateAllShards())

        // Both types can be used through the shared protocol.
        let sources: [TensorSource] = [archive, try SafeTensorsFile(url: url(firstShard))]
        for source in sources { XCTAssertEqual(try source.floats("encoder.bias"), [0.5, -0.5]) }
    }

    func testShardsAreOpenedOnlyWhenUsed() throws {
        let indexURL = try makeShardedCheckpoint()
        let archive = try SafeTensorsArchive(url: indexURL)
        // Corrupt the second shard after the archive is open: the first one still reads fine,
        // and the second fails with its own error only when one of its keys is used.
        let corrupt = try writeBytes(secondShard, [1, 2, 3])
        XCTAssertEqual(try archive.floats("encoder.bias"), [0.5, -0.5])
        assertThrows(.truncated(file: corrupt.path, size: 3), mentions: [secondShard]) { try archive.int64s("decoder.ids") }
    }

    func testMissingShardFile() throws {
        let indexURL = try makeShardedCheckpoint(extraWeightMap: #", "head.weight": "model-00003-of-00002.safetensors""#)
        assertThrows(
            .shardNotFound(indexFile: indexURL.path, shard: "model-00003-of-00002.safetensors"),
            mentions: ["model.safetensors.index.json", "model-00003-of-00002.safetensors"]
        ) { try SafeTensorsArchive(url: indexURL) }
    }

    func testKeyInIndexButMissingFromItsShard() throws {
        let indexURL = try makeShardedCheckpoint(extraWeightMap: #", "encoder.gamma": "\#(firstShard)""#)
        let archive = try SafeTensorsArchive(url: indexURL)
        XCTAssertTrue(archive.names.contains("encoder.gamma"))
        let expected = SafeTensorsError.keyMissingFromShard(indexFile: indexURL.path, key: "encoder.gamma", shard: firstShard)
        let mentions = ["model.safetensors.index.json", "'encoder.gamma'", firstShard]
        // Any use of the shard checks all of its keys, not just the one asked for.
        assertThrows(expected, mentions: mentions) { try archive.floats("encoder.weight") }
        assertThrows(expected, mentions: mentions) { try archive.validateAllShards() }
        // The other shard is unaffected.
        XCTAssertEqual(try archive.int64s("decoder.ids"), [7, 8, 9])
    }

    func testKeyNotInIndex() throws {
        let indexURL = try makeShardedCheckpoint()
        let archive = try SafeTensorsArchive(url: indexURL)
        assertThrows(.keyNotFound(file: indexURL.path, key: "nope"), mentions: ["model.safetensors.index.json", "'nope'"]) {
            try archive.info("nope")
        }
    }

    func testInvalidIndexFiles() throws {
        let cases: [(json: String, reason: String)] = [
            ("[]", "expected a JSON object"),
            ("{\"metadata\": {}}", "missing 'weight_map'"),
            ("{\"weight_map\": []}", "'weight_map' must be an object"),
            ("{\"weight_map\": {\"w\": 3}}", "weight_map entry 'w' must be a shard file name"),
            ("{\"weight_map\": {\"w\": \"a.safetensors\", \"w\": \"b.safetensors\"}}", "duplicate weight_map key 'w'"),
            ("{\"weight_map\": {\"w\": \"../a.safetensors\"}}", "shard '../a.safetensors' of 'w' must be a relative path inside the index's folder"),
            ("{\"weight_map\": {}, \"metadata\": {\"x\": [1]}}", "metadata 'x' must be a string, number or boolean"),
            ("{\"weight_map\": {", "not valid JSON: expected a string key at byte 16"),
        ]
        for (index, testCase) in cases.enumerated() {
            let indexURL = url("bad\(index).safetensors.index.json")
            try Data(testCase.json.utf8).write(to: indexURL)
            assertThrows(.invalidIndex(file: indexURL.path, reason: testCase.reason), mentions: ["bad\(index).safetensors.index.json"]) {
                try SafeTensorsArchive(url: indexURL)
            }
        }
    }

    func testMissingIndexFile() {
        let indexURL = url("absent.safetensors.index.json")
        XCTAssertThrowsError(try SafeTensorsArchive(url: indexURL)) { error in
            guard case .cannotOpen(let file, _) = error as? SafeTensorsError else { return XCTFail("\(error)") }
            XCTAssertEqual(file, indexURL.path)
        }
    }
}
