import Foundation
import XCTest
import Diffusion
import Tensor

/// Fixed text conditioning: each prompt names a row of the fixture's embeddings.
final class TableFluxEncoder: FluxTextEncoder {
    let rows: [String: (states: Tensor, pooled: Tensor)]
    let stateWidth: Int
    let pooledWidth: Int

    init(_ rows: [String: (states: Tensor, pooled: Tensor)]) {
        self.rows = rows
        stateWidth = rows.values.first!.states.shape[2]
        pooledWidth = rows.values.first!.pooled.shape[1]
    }

    func encode(prompts: [String]) -> (states: Tensor, pooled: Tensor) {
        (Tensor.concat(prompts.map { rows[$0]!.states }, axis: 0), Tensor.concat(prompts.map { rows[$0]!.pooled }, axis: 0))
    }
}

/// FluxPipeline against diffusers' FluxPipeline itself (tools/make_flux_fixtures.py,
/// pipeline.*): the flux_guided tiny transformer sampled from fixed latents with given prompt
/// embeddings, with true CFG and embedded guidance, and with neither.
final class FluxPipelineTests: XCTestCase {
    static let root = Fixtures.folder("flux")

    func pipeline(_ encoder: TableFluxEncoder) throws -> FluxPipeline {
        let configData = try Data(contentsOf: FluxSchedulerTests.root.appendingPathComponent("scheduler.json"))
        let configs = (try JSONSerialization.jsonObject(with: configData) as! [String: Any])["configs"] as! [String: Any]
        let scheduler = try FlowMatchEulerDiscreteScheduler(
            config: try JSONDecoder().decode(FlowMatchEulerDiscreteScheduler.Config.self,
                                             from: try JSONSerialization.data(withJSONObject: configs["flux"]!)))
        let transformer = try FluxTransformer2DModel(directory: Self.root.appendingPathComponent("flux_guided"))
        return try FluxPipeline(textEncoder: encoder, transformer: transformer, vae: nil, scheduler: scheduler)
    }

    func testSamplingEqualsDiffusersFluxPipeline() throws {
        let t = try TensorArchive(contentsOf: Self.root.appendingPathComponent("pipeline.safetensors"))
        let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.root.appendingPathComponent("pipeline.json"))) as! [String: Any]
        XCTAssertEqual(Set(cases.keys), ["cfg", "plain"])
        for (name, value) in cases.sorted(by: { $0.key < $1.key }) {
            let c = value as! [String: Any]
            let steps = c["steps"] as! Int, batch = c["batch"] as! Int
            let trueCFG = Float(truncating: c["true_cfg_scale"] as! NSNumber), embedded = Float(truncating: c["guidance_scale"] as! NSNumber)
            let embeds = try t.tensor("\(name).prompt_embeds"), pooled = try t.tensor("\(name).pooled_prompt_embeds")
            var rows = ["negative": (try t.tensor("\(name).negative_prompt_embeds"), try t.tensor("\(name).negative_pooled_prompt_embeds"))]
            for i in 0..<batch {
                rows["prompt \(i)"] = (embeds.narrowed(axis: 0, start: i, length: 1), pooled.narrowed(axis: 0, start: i, length: 1))
            }
            let pipeline = try pipeline(TableFluxEncoder(rows))
            let latents = try t.tensor("\(name).latents")
            let (h, w) = (latents.shape[2], latents.shape[3])
            let schedule = try pipeline.schedule(steps: steps, height: h, width: w)
            XCTAssertEqual(schedule.timesteps, (c["timesteps"] as! [NSNumber]).map { Float(truncating: $0) }, name)
            var stepsSeen = 0
            let out = try pipeline.sampleLatents(prompts: (0..<batch).map { "prompt \($0)" }, negativePrompt: "negative",
                                                 steps: steps, guidance: trueCFG, embeddedGuidance: embedded, seed: 0,
                                                 height: h, width: w, initialNoise: latents) { step, total in
                stepsSeen = step
                XCTAssertEqual(total, steps)
                return .proceed
            }
            XCTAssertEqual(stepsSeen, steps)
            assertClose(out, try t.tensor("\(name).unpacked"), tolerance: 1e-5, "\(name) final latents")
            assertClose(FluxTransformer2DModel.packLatents(out), try t.tensor("\(name).final"), tolerance: 1e-5, "\(name) packed")
        }
    }

    func testTheProgressHandlerStopsTheRunWhereItSays() throws {
        let t = try TensorArchive(contentsOf: Self.root.appendingPathComponent("pipeline.safetensors"))
        let pipeline = try pipeline(TableFluxEncoder(["p": (try t.tensor("plain.prompt_embeds"), try t.tensor("plain.pooled_prompt_embeds"))]))
        let latents = try t.tensor("plain.latents")
        let (h, w) = (latents.shape[2], latents.shape[3])
        func run(steps: Int, stopAt: Int?) throws -> Tensor {
            try pipeline.sampleLatents(prompts: ["p"], steps: steps, guidance: 1, embeddedGuidance: 2, seed: 0, height: h, width: w,
                                       initialNoise: latents) { step, _ in step == stopAt ? .stop : .proceed }
        }
        let stopped = try run(steps: 4, stopAt: 2)
        // Two steps of a 4-step run, done by hand with the same loop pieces.
        let schedule = try pipeline.schedule(steps: 4, height: h, width: w)
        let conditioning = pipeline.encodePrompts(["p"])
        let byHand = try noGrad {
            try pipeline.denoise(FluxTransformer2DModel.packLatents(latents), height: h, width: w, conditional: conditioning,
                                 unconditional: nil, guidance: 1, embeddedGuidance: 2, schedule: schedule, steps: 0..<2)
        }
        XCTAssertEqual(FluxTransformer2DModel.packLatents(stopped).scalars, byHand.scalars)
        XCTAssertNotEqual(stopped.scalars, try run(steps: 4, stopAt: nil).scalars)
    }

    func testGuidanceArgumentsAreChecked() throws {
        let t = try TensorArchive(contentsOf: Self.root.appendingPathComponent("pipeline.safetensors"))
        let encoder = TableFluxEncoder(["p": (try t.tensor("plain.prompt_embeds"), try t.tensor("plain.pooled_prompt_embeds"))])
        let pipeline = try pipeline(encoder)
        XCTAssertThrowsError(try pipeline.generate(prompts: ["p"], steps: 2, guidance: 1, seed: 0, height: 5, width: 4)) {
            XCTAssert("\($0)".contains("multiple of 2"), "\($0)")
        }
        // A transformer without guidance_embeds refuses an embedded guidance.
        var config = pipeline.transformer.config
        config.guidanceEmbeds = false
        var g = RandomGenerator(seed: 0)
        let plain = try FluxPipeline(textEncoder: encoder, transformer: try FluxTransformer2DModel(config: config, generator: &g),
                                     vae: nil, scheduler: pipeline.scheduler)
        XCTAssertThrowsError(try plain.generate(prompts: ["p"], steps: 2, guidance: 1, embeddedGuidance: 3, seed: 0, height: 8, width: 4)) {
            XCTAssert("\($0)".contains("guidance_embeds"), "\($0)")
        }
        XCTAssertEqual(try plain.generate(prompts: ["p"], steps: 2, guidance: 1, seed: 0, height: 8, width: 4).shape, [1, 2, 8, 4])
    }
}
