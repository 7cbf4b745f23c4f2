import Diffusion
import Erasure
import Foundation
import SafeTensors
import Tensor

/// The human side of an evaluation: a Markdown summary and a self-contained HTML page with
/// before/after image grids and the training curves (inline PNG and SVG, no external files).
public struct EvaluationReport {
    public var evaluation: ObjectEvaluation
    public var after: EvaluationImages
    public var before: EvaluationImages?
    /// run.json of the erasure, when the evaluated model came from `score erase`.
    public var record: ErasureRecord?

    public init(evaluation: ObjectEvaluation, after: EvaluationImages, before: EvaluationImages?, record: ErasureRecord?) {
        self.evaluation = evaluation
        self.after = after
        self.before = before
        self.record = record
    }

    /// Writes evaluation.json, report.md, report.html and the grids as PNG files into `folder`.
    @discardableResult
    public func write(to folder: URL) throws -> URL {
        try writeJSONAtomically(evaluation, to: folder.appendingPathComponent("evaluation.json"))
        for grid in grids() {
            try PNG.write(PixelImage(tensor: grid.image), to: folder.appendingPathComponent("\(grid.name).png"))
        }
        try SafeTensors.writeAtomically(Data(markdown().utf8), to: folder.appendingPathComponent("report.md"))
        let html = folder.appendingPathComponent("report.html")
        try SafeTensors.writeAtomically(Data(self.html().utf8), to: html)
        return html
    }

    // MARK: Figures

    static func percent(_ x: Double?) -> String { x.map { String(format: "%.1f%%", $0 * 100) } ?? "–" }
    static func number(_ x: Double?, _ format: String = "%.4f") -> String { x.map { String(format: format, $0) } ?? "–" }

    /// "12.5% [4.1, 28.2]": a rate over `trials` images with its 95% Wilson interval.
    static func rate(_ x: Double?, trials: Int) -> String {
        guard let x else { return "–" }
        return Estimate.wilson(successes: Int((x * Double(trials)).rounded()), trials: trials).text()
    }

    /// Rows of (label, before, after) for the summary table; rates with their 95% intervals
    /// (Wilson; H_o a bootstrap over the images).
    var rows: [(String, String, String)] {
        let e = evaluation, o = evaluation.original, s = evaluation.settings
        let retained = s.retainImagesPerClass * max(1, e.per_class_accuracy.count)
        let hO = e.judged.flatMap { BenchmarkStatistics.hO([$0], label: e.label) }?.text() ?? Self.percent(e.h_o)
        return [
            ("Acc_e (target prompt, ↓)", Self.rate(o?.acc_e, trials: s.targetImages), Self.rate(e.acc_e, trials: s.targetImages)),
            ("Acc_g (paraphrases, ↓)", Self.rate(o?.acc_g, trials: s.paraphraseImages), Self.rate(e.acc_g, trials: s.paraphraseImages)),
            ("Acc_s (other classes, ↑)", Self.rate(o?.acc_s, trials: retained), Self.rate(e.acc_s, trials: retained)),
            ("H_o (↑)", Self.percent(o?.h_o), hO),
            ("second judge (\(e.settings.secondJudge)) Acc_e / Acc_g / Acc_s", "",
             "\(Self.percent(e.second_judge.acc_e)) / \(Self.percent(e.second_judge.acc_g)) / \(Self.percent(e.second_judge.acc_s))"),
            ("KID vs original model (retained prompts)", "", Self.number(e.kid)),
            ("KID vs real test images (retained classes)", "", Self.number(e.kid_real)),
            ("estimated leakage Î (nats), 95% interval", "", Self.number(e.leakage_nats)
                + (e.leakage.map { String(format: " [%.4f, %.4f]", $0.leakage_interval[0], $0.leakage_interval[1]) } ?? "")),
            ("estimated bound on a detector's accuracy ½ + √(Î/2)", "", Self.number(e.leakage_bound, "%.3f")),
            ("information proven by a detector's accuracy (nats, 95% lower bound)", "",
             e.leakage.flatMap { r in r.accuracy_implied_nats.map { String(format: "%.4f (%@)", $0, r.accuracy_implied_critic ?? "") } } ?? "–"),
        ]
    }

    /// The per-detector leakage table: (header, rows), each row's cells as text.
    static func leakageTable(_ leakage: LeakageReport) -> (header: [String], rows: [[String]]) {
        let header = ["detector", "Î (nats)", "95% interval", "held-out accuracy", "95% Wilson interval", "accuracy implies ≥ (nats)"]
        let rows = leakage.critics.map { c in
            [c.critic, String(format: "%.4f", c.leakage_nats), String(format: "[%.4f, %.4f]", c.interval_low, c.interval_high),
             String(format: "%.3f", c.accuracy), c.accuracy_interval.map { String(format: "[%.3f, %.3f]", $0[0], $0[1]) } ?? "–",
             c.accuracy_implied_nats.map { String(format: "%.4f", $0) } ?? "–"]
        }
        return (header, rows)
    }

    public func markdown() -> String {
        let e = evaluation, s = e.settings
        var text = """
        # Erasure of "\(e.concept)"

        Model: `\(e.model)`\(e.original_model.map { ", original: `\($0)`" } ?? "").
        Sampler: DDIM \(s.steps) steps, guidance \(s.guidance), seed \(s.seed); judge: \(s.judge) \
        (second judge: \(s.secondJudge)); \(s.targetImages) target images, \(s.paraphraseImages) paraphrase images, \
        \(s.retainImagesPerClass) per retained class.

        | metric | original | erased |
        |---|---|---|

        """
        for (name, before, after) in rows { text += "| \(name) | \(before) | \(after) |\n" }
        if let classes = e.target_classes {
            let drawn = classes.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
                .map { "\($0.key) \(Self.percent($0.value))" }.joined(separator: ", ")
            text += "\nWhat the target prompt draws now (\(s.judge) judge): \(drawn).\n"
        }
        if let leakage = e.leakage {
            let (header, rows) = Self.leakageTable(leakage)
            text += "\n## Leakage\n\n\(leakage.note)\n\n| " + header.joined(separator: " | ") + " |\n|"
                + String(repeating: "---|", count: header.count) + "\n"
            for row in rows { text += "| " + row.joined(separator: " | ") + " |\n" }
        }
        if let record {
            text += String(format: "\n## Training\n\n`%@`: %d steps, %.0f s, %d parameters changed (%d tensors), peak memory %@ MB.\n",
                           record.method, record.steps, record.wall_seconds, record.parameters_changed, record.tensors_changed,
                           Self.number(record.peak_memory_mb, "%.0f"))
        }
        text += "\nImages: " + grids().map { "`\($0.name).png` (\($0.caption))" }.joined(separator: ", ") + ".\n"
        return text
    }

    /// Before/after grids: (file name, caption, image [C, H, W]).
    func grids() -> [(name: String, caption: String, image: Tensor)] {
        func rows(_ sets: [Tensor], columns: Int) -> Tensor {
            let tiles = sets.flatMap { set in (0..<min(columns, set.shape[0])).map { set.narrowed(axis: 0, start: $0, length: 1) } }
            return imageGrid(images: tiles, rows: sets.count, cols: columns)
        }
        func retainedSample(_ images: EvaluationImages) -> Tensor {
            // The first image of each retained class.
            let firsts = images.retainedLabels.indices.filter { $0 == 0 || images.retainedLabels[$0] != images.retainedLabels[$0 - 1] }
            return Tensor.concat(firsts.map { images.retained.narrowed(axis: 0, start: $0, length: 1) }, axis: 0)
        }
        let columns = 9
        var result: [(String, String, Tensor)] = []
        let pairs: [(String, String, (EvaluationImages) -> Tensor)] = [
            ("grid-target", "target prompt", { $0.target }),
            ("grid-paraphrase", "paraphrase prompts", { $0.paraphrase }),
            ("grid-retained", "one image per retained class", retainedSample),
        ]
        for (name, caption, pick) in pairs {
            var sets = [pick(after)]
            if let before { sets.insert(pick(before), at: 0) }
            result.append((name, before == nil ? caption : "\(caption): top row original, bottom row erased", rows(sets, columns: columns)))
        }
        return result
    }

    // MARK: HTML

    public func html() -> String {
        let e = evaluation
        var body = "<h1>Erasure of “\(escape(e.concept))”</h1>\n"
        body += "<p>Model <code>\(escape(e.model))</code>\(e.original_model.map { ", original <code>\(escape($0))</code>" } ?? ""). "
        body += "DDIM \(e.settings.steps) steps, guidance \(e.settings.guidance), seed \(e.settings.seed), judge \(e.settings.judge).</p>\n"
        body += "<table><tr><th>metric</th><th>original</th><th>erased</th></tr>\n"
        for (name, before, after) in rows { body += "<tr><td>\(escape(name))</td><td>\(before)</td><td>\(after)</td></tr>\n" }
        body += "</table>\n"
        for grid in grids() {
            let png = PNG.encode(PixelImage(tensor: grid.image)).base64EncodedString()
            body += "<h2>\(escape(grid.caption.prefix(1).uppercased() + grid.caption.dropFirst()))</h2>\n"
            body += "<img class=\"grid\" src=\"data:image/png;base64,\(png)\" width=\"\(grid.image.shape[2] * 4)\">\n"
        }
        if let leakage = e.leakage {
            let (header, rows) = Self.leakageTable(leakage)
            body += "<h2>Leakage</h2><p>\(escape(leakage.note))</p><table><tr>" + header.map { "<th>\(escape($0))</th>" }.joined() + "</tr>\n"
            for row in rows { body += "<tr>" + row.map { "<td>\(escape($0))</td>" }.joined() + "</tr>\n" }
            body += "</table>\n"
        }
        if let record {
            body += "<h2>Training curves</h2>\n<div class=\"charts\">\n"
            for term in ["erase", "trajectory", "adversarial", "critic", "critic_accuracy"] {
                if let values = record.losses[term]?.compactMap({ $0 }), values.count > 1 {
                    body += lineChart(title: term, values: values, yLabel: term == "critic_accuracy" ? "accuracy" : "loss")
                }
            }
            body += "</div>\n"
        }
        return """
        <!doctype html><html><head><meta charset="utf-8"><title>score: erasure of \(escape(e.concept))</title>
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;overflow-wrap:anywhere}
        table{border-collapse:collapse;max-width:100%}td,th{border:1px solid #ccc;padding:.2em .6em}
        img.grid{image-rendering:pixelated;display:block;max-width:100%;height:auto}
        .charts{display:flex;flex-wrap:wrap;gap:.5em 1.5em}svg.chart{max-width:100%;height:auto}</style>
        </head><body>
        \(body)</body></html>
        """
    }

    func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    /// An inline SVG line chart of one series (a 10-step moving average over the raw values),
    /// with labelled axes: training steps along x, `yLabel` along y, round ticks on both.
    func lineChart(title: String, values: [Float], yLabel: String) -> String {
        let (width, height) = (360.0, 210.0)
        let (left, right, top, bottom) = (52.0, 12.0, 24.0, 40.0)
        let window = 10
        let smoothed = values.indices.map { i -> Double in
            let slice = values[max(0, i - window + 1)...i]
            return Double(slice.reduce(0, +)) / Double(slice.count)
        }
        var lo = smoothed.min() ?? 0, hi = smoothed.max() ?? 1
        if hi <= lo { (lo, hi) = (lo - 0.5, hi + 0.5) }
        let steps = Double(values.count)
        func x(_ step: Double) -> Double { left + step / steps * (width - left - right) }
        func y(_ value: Double) -> Double { height - bottom - (value - lo) / (hi - lo) * (height - top - bottom) }
        func label(_ value: Double) -> String { String(format: "%.3g", value) }
        // Step i of the series is training step i + 1.
        let points = smoothed.enumerated().map { String(format: "%.1f,%.1f", x(Double($0.offset + 1)), y($0.element)) }.joined(separator: " ")
        var svg = """
        <svg class="chart" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-size="10">
        <title>\(escape(title)): \(escape(yLabel)) per training step</title>
        <text x="\(left)" y="14" font-size="12">\(escape(title)) (\(values.count) steps, 10-step moving average)</text>
        <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(height - bottom)" stroke="#666"/>
        <line x1="\(left)" y1="\(height - bottom)" x2="\(width - right)" y2="\(height - bottom)" stroke="#666"/>

        """
        for step in Self.ticks(from: 0, to: steps) {
            let px = String(format: "%.1f", x(step))
            svg += "<line x1=\"\(px)\" y1=\"\(height - bottom)\" x2=\"\(px)\" y2=\"\(height - bottom + 4)\" stroke=\"#666\"/>"
            svg += "<text x=\"\(px)\" y=\"\(height - bottom + 15)\" text-anchor=\"middle\">\(label(step))</text>\n"
        }
        for value in Self.ticks(from: lo, to: hi) {
            let py = String(format: "%.1f", y(value))
            svg += "<line x1=\"\(left - 4)\" y1=\"\(py)\" x2=\"\(left)\" y2=\"\(py)\" stroke=\"#666\"/>"
            svg += "<text x=\"\(left - 6)\" y=\"\(py)\" text-anchor=\"end\" dominant-baseline=\"middle\">\(label(value))</text>\n"
        }
        svg += """
        <text x="\((left + width - right) / 2)" y="\(height - 6)" text-anchor="middle">training step</text>
        <text transform="translate(12 \((top + height - bottom) / 2)) rotate(-90)" text-anchor="middle">\(escape(yLabel))</text>
        <polyline fill="none" stroke="#3366cc" stroke-width="1.5" points="\(points)"/>
        </svg>

        """
        return svg
    }

    /// Round tick values in lo...hi: the multiples of 1, 2 or 5 × 10ᵏ that give at most about
    /// `count` + 1 ticks.
    static func ticks(from lo: Double, to hi: Double, count: Int = 5) -> [Double] {
        guard hi > lo, lo.isFinite, hi.isFinite else { return [lo] }
        let raw = (hi - lo) / Double(count)
        let magnitude = pow(10, (log10(raw)).rounded(.down))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= raw * (1 - 1e-9) } ?? 10 * magnitude
        let first = (lo / step).rounded(.up)
        return stride(from: first, through: (hi / step + 1e-9).rounded(.down), by: 1).map { $0 * step }
    }
}
