import Diffusion
import Erasure
import Evaluation
import Foundation
import XCTest

/// A run folder's model/ and run.json carry one run id; a model/ moved into another run's folder
/// is refused before anything is read from it.
final class RunIDTests: XCTestCase {
    func run(into out: URL, base: URL, full: Bool) throws {
        var job = EraseJob(method: ESD(config: BaselineTests.tinyESD(iterations: 1)), request: BaselineTests.request,
                           baseFolder: base, baseName: base.path, output: out)
        job.leakage = nil
        job.full = full
        try job.run(pipeline: try Tiny.pipeline(), log: { _ in })
    }

    func testSwappedModelFolderIsRefusedNamingBothFiles() throws {
        let folder = Tiny.temporaryFolder("runid")
        defer { try? FileManager.default.removeItem(at: folder) }
        let base = folder.appendingPathComponent("base")
        try Tiny.save(try Tiny.pipeline(), to: base)
        let first = folder.appendingPathComponent("first"), second = folder.appendingPathComponent("second")
        try run(into: first, base: base, full: false)
        try run(into: second, base: base, full: true)

        let record = try XCTUnwrap(try ErasedModel.record(beside: first.appendingPathComponent("model")))
        let id = try XCTUnwrap(record.run_id)
        XCTAssertEqual(try ErasedModel.runID(in: first.appendingPathComponent("model"))?.id, id)
        XCTAssertEqual(try ErasedModel.manifest(in: first.appendingPathComponent("model"))?.run_id, id)
        // A --full model carries its id in the UNet weights' metadata.
        let fullID = try XCTUnwrap(try ErasedModel.runID(in: second.appendingPathComponent("model")))
        XCTAssertEqual(fullID.file.lastPathComponent, "diffusion_pytorch_model.safetensors")
        XCTAssertEqual(fullID.id, try ErasureRecord.read(from: second.appendingPathComponent("run.json")).run_id)
        XCTAssertNotEqual(fullID.id, id)

        // The second run's model moved beside the first run's record.
        let fm = FileManager.default
        try fm.removeItem(at: first.appendingPathComponent("model"))
        try fm.copyItem(at: second.appendingPathComponent("model"), to: first.appendingPathComponent("model"))
        for attempt in [{ _ = try ErasedModel.record(beside: first.appendingPathComponent("model")) },
                        { _ = try ModelLoader.load(first.appendingPathComponent("model").path) }] {
            XCTAssertThrowsError(try attempt()) { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains(first.appendingPathComponent("run.json").path), message)
                XCTAssertTrue(message.contains(first.appendingPathComponent("model/unet/diffusion_pytorch_model.safetensors").path), message)
                XCTAssertTrue(message.contains(id) && message.contains(fullID.id), message)
            }
        }
        // A record of no run id (written before run ids) beside a model of one is refused too.
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: first.appendingPathComponent("run.json"))) as! [String: Any]
        object["run_id"] = nil
        try JSONSerialization.data(withJSONObject: object).write(to: first.appendingPathComponent("run.json"))
        XCTAssertThrowsError(try ErasedModel.record(beside: first.appendingPathComponent("model")))
    }
}
