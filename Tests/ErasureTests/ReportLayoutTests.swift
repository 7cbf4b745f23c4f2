import Diffusion
import Erasure
@testable import Evaluation
import Foundation
import Tensor
import XCTest

/// The HTML report fits a 1200-pixel window: grids scale to the page, curves carry labelled axes
/// and step ticks. The browser check runs headless Chromium (Debian's `chromium`) and is skipped
/// where it is not installed.
final class ReportLayoutTests: XCTestCase {
    static func report(steps: Int = 250) throws -> EvaluationReport {
        let accuracies: [String: Any] = ["acc_e": 0.1, "acc_s": 0.9, "acc_g": 0.2, "h_o": 0.85]
        var object: [String: Any] = accuracies
        object.merge(["concept": "sneaker", "label": 7, "kid_real": 0.01, "second_judge": accuracies, "per_class_accuracy": ["Bag": 0.9],
                      "settings": try JSONSerialization.jsonObject(with: JSONEncoder().encode(EvaluationSettings())),
                      "model": "/a/rather/long/path/to/runs/an-erasure-with-a-long-name/model", "original": accuracies,
                      "original_model": "embedded"]) { a, _ in a }
        var evaluation = try JSONDecoder().decode(ObjectEvaluation.self, from: JSONSerialization.data(withJSONObject: object))
        // The widest table: every detector's row of the leakage estimate.
        evaluation.leakage = LeakageReport(concept: "sneaker", critics: ["critic w32", "linear probe on cnn judge features",
                                                                        "linear probe on mlp judge features"].map {
            CriticLeakage(critic: $0, leakage_nats: 0.2, interval_low: 0.1, interval_high: 0.3, accuracy: 0.9, test_samples: 1500,
                          accuracy_samples: 100)
        }, trajectories_per_class: 400)
        var generator = RandomGenerator(seed: 3)
        func images(_ count: Int) -> Tensor { generator.uniform([count, 1, 32, 32]) }
        let set = EvaluationImages(target: images(32), paraphrase: images(30), paraphrasePrompts: ["a running shoe"],
                                   retained: images(9), retainedLabels: Array(0..<9))
        let request = ErasureRequest(concepts: [Concept(name: "sneaker", targetPrompts: ["sneaker"], anchor: "")], retainPrompts: [])
        let losses: [String: [Float]] = ["erase": (0..<steps).map { 1 / Float($0 + 1) }, "critic_accuracy": (0..<steps).map { 0.5 + Float($0 % 7) / 20 }]
        let record = ErasureRecord(method: "score", command: "score erase", base_model: "embedded", request: request, seed: 0, steps: steps,
                                   losses: losses, wall_seconds: 1, peak_memory_mb: nil, trainable_parameters: 1, parameters_changed: 1,
                                   tensors_changed: 1, mask_kept: nil, threads: 1)
        return EvaluationReport(evaluation: evaluation, after: set, before: set, record: record)
    }

    func testTicksAreRound() {
        XCTAssertEqual(EvaluationReport.ticks(from: 0, to: 250), [0, 50, 100, 150, 200, 250])
        XCTAssertEqual(EvaluationReport.ticks(from: 0, to: 6), [0, 2, 4, 6])
        let small = EvaluationReport.ticks(from: 0.12, to: 0.87)
        XCTAssertEqual(small.count, 4)
        for (a, b) in zip(small, [0.2, 0.4, 0.6, 0.8]) { XCTAssertEqual(a, b, accuracy: 1e-12) }
    }

    func testCurvesHaveLabelledAxesAndStepTicks() throws {
        let html = try Self.report().html()
        XCTAssertEqual(html.components(separatedBy: "<svg class=\"chart\"").count - 1, 2)
        XCTAssertEqual(html.components(separatedBy: ">training step</text>").count - 1, 2)
        XCTAssert(html.contains(">loss</text>") && html.contains(">accuracy</text>"))
        for tick in ["0", "50", "100", "150", "200", "250"] { XCTAssert(html.contains("text-anchor=\"middle\">\(tick)</text>"), tick) }
        XCTAssert(html.contains("max-width:100%"))
    }

    /// Renders the report in headless Chromium at 1200 px and checks that no element reaches past
    /// the window's right edge; the same page without the scaling rules must overflow (so the
    /// measurement can fail). By hand: `chromium --headless --no-sandbox --window-size=1200,900
    /// --screenshot=report.png report.html`.
    func testReportFitsA1200PixelWindowInChromium() throws {
        guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: FileManager.default.isExecutableFile) else {
            throw XCTSkip("headless Chromium is not installed (apt-get install chromium)")
        }
        let html = try Self.report().html()
        XCTAssertEqual(try overflow(of: html, chromium: chromium), [], "elements past the right edge at 1200 px")
        let unscaled = try overflow(of: html.replacingOccurrences(of: "max-width:100%", with: "max-width:none"), chromium: chromium)
        XCTAssert(unscaled.contains { $0.hasPrefix("IMG") }, "the unscaled grids should overflow: \(unscaled)")
    }

    /// The elements of `html` that reach past the right edge of a 1200-pixel Chromium window.
    func overflow(of html: String, chromium: String) throws -> [String] {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("score-report-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let measure = """
        <script>addEventListener('load', () => {
          const width = document.documentElement.clientWidth, over = [];
          for (const e of document.body.querySelectorAll('*')) {
            const r = e.getBoundingClientRect();
            if (r.right > width + 0.5) over.push(e.tagName + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
          }
          if (document.documentElement.scrollWidth > width) over.push('page ' + document.documentElement.scrollWidth);
          const pre = document.createElement('pre'); pre.id = 'layout-check';
          pre.textContent = JSON.stringify({width: width, over: over}); document.body.appendChild(pre);
        });</script></body>
        """
        let page = folder.appendingPathComponent("report.html")
        try Data(html.replacingOccurrences(of: "</body>", with: measure).utf8).write(to: page)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: chromium)
        process.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,900",
                             "--user-data-dir=\(folder.appendingPathComponent("profile").path)", "--virtual-time-budget=5000",
                             "--dump-dom", page.absoluteString]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let dom = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let start = try XCTUnwrap(dom.range(of: "<pre id=\"layout-check\">"), "no measurement in Chromium's DOM: \(dom.prefix(300))")
        let json = dom[start.upperBound...].prefix { $0 != "<" }.replacingOccurrences(of: "&quot;", with: "\"")
        let result = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        XCTAssertEqual(result["width"] as? Int, 1200)
        return try XCTUnwrap(result["over"] as? [String])
    }
}
