import Foundation
import XCTest
@testable import Diffusion
import NN
import SafeTensors
import Tensor

/// StableDiffusionPipeline on the tiny pipeline of tools/make_pipeline_fixture.py: parity with
/// diffusers' StableDiffusionPipeline, determinism, guidance, partial runs, and loading errors.
final class PipelineTests: XCTestCase {
    func kind(_ className: String) -> SchedulerKind { SchedulerKind(rawValue: className)! }

    // MARK: Parity

    func testSamplesMatchDiffusersStableDiffusionPipeline() throws {
        let folder = try PipelineFixture.folder(self)
        let reference = try PipelineFixture.reference()
        for c in try PipelineFixture.cases() {
            let pipeline = try StableDiffusionPipeline(directory: folder, scheduler: kind(c.scheduler))
            if let overrides = c.scheduler_overrides {
                var object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(pipeline.scheduler.config)) as! [String: Any]
                for (key, value) in overrides { object[key] = value }
                let config = try SchedulerConfig(json: JSONSerialization.data(withJSONObject: object), source: c.name)
                pipeline.scheduler = try StableDiffusionPipeline.makeScheduler(kind(c.scheduler), config: config)
            }
            let noise = try reference.tensor("\(c.name).noise")
            let latents = try pipeline.sampleLatents(prompts: c.prompts, negativePrompt: c.negative_prompt, steps: c.steps,
                                                     guidance: c.guidance, seed: 0, initialNoise: noise)
            assertClose(latents, try reference.tensor("\(c.name).latents"), tolerance: 1e-4, "\(c.name) latents")
            let images = noGrad { pipeline.decode(latents) }
            assertClose(images, try reference.tensor("\(c.name).images"), tolerance: 1e-4, "\(c.name) images")
            // generate() is sampleLatents + decode.
            let generated = try pipeline.generate(prompts: c.prompts, negativePrompt: c.negative_prompt, steps: c.steps,
                                                  guidance: c.guidance, seed: 0, initialNoise: noise)
            assertSameBits(generated, images, "\(c.name) generate")
        }
    }

    func testLoadsTheFolderAsDescribed() throws {
        let pipeline = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self))
        XCTAssertTrue(pipeline.textEncoder is CLIPTextEncoder)
        XCTAssertFalse(pipeline.passesAttentionMask, "SD does not pass CLIP's mask to the UNet")
        XCTAssertNotNil(pipeline.vae)
        XCTAssertTrue(pipeline.scheduler is DDIMScheduler)
        XCTAssertEqual(pipeline.vaeScaleFactor, 2)
        XCTAssertEqual(pipeline.defaultHeight, 16)
        XCTAssertEqual(pipeline.defaultWidth, 16)
        XCTAssertEqual(try pipeline.latentShape(batch: 3, height: 16, width: 24), [3, 4, 8, 12])
        expectError(try pipeline.latentShape(batch: 1, height: 18, width: 16), mentioning: ["18×16", "multiple of 4"], "odd size")
    }

    // MARK: Determinism

    func testSameSeedGivesTheSameBitsAndAnotherSeedOtherImages() throws {
        let pipeline = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self))
        let a = try pipeline.generate(prompts: ["a cat"], steps: 3, guidance: 4, seed: 42)
        let b = try pipeline.generate(prompts: ["a cat"], steps: 3, guidance: 4, seed: 42)
        assertSameBits(a, b, "same seed")
        let c = try pipeline.generate(prompts: ["a cat"], steps: 3, guidance: 4, seed: 43)
        XCTAssertGreaterThan(relativeError(c, a), 1e-3, "another seed")
        XCTAssertEqual(a.shape, [1, 3, 16, 16])
        XCTAssertTrue(a.scalars.allSatisfy { $0 >= -1 && $0 <= 1 })
    }

    func testImageIsTheSameAloneOrInABatch() throws {
        let folder = try PipelineFixture.folder(self)
        for scheduler in [SchedulerKind.ddim, .ddpm, .eulerDiscrete] {  // DDPM draws fresh noise at each step
            let pipeline = try StableDiffusionPipeline(directory: folder, scheduler: scheduler)
            let prompts = ["a cat", "a dog on the grass", "a red bird"]
            let batch = try pipeline.generate(prompts: prompts, negativePrompt: "blurry", steps: 3, guidance: 6, seed: 9)
            for i in prompts.indices {
                let alone = try pipeline.generate(prompts: [prompts[i]], negativePrompt: "blurry", steps: 3, guidance: 6,
                                                  seed: 9, firstImageIndex: i)
                assertSameBits(alone, batch.narrowed(axis: 0, start: i, length: 1), "\(scheduler) image \(i)")
            }
            // A later batch continues the numbering.
            let tail = try pipeline.generate(prompts: Array(prompts[1...]), negativePrompt: "blurry", steps: 3, guidance: 6,
                                             seed: 9, firstImageIndex: 1)
            assertSameBits(tail, batch.narrowed(axis: 0, start: 1, length: 2), "\(scheduler) images 1, 2")
        }
    }

    /// The testbed's set-up: a BERT encoder whose states are padded to the longest prompt of the
    /// batch, padded states zeroed and the mask passed to the UNet. Other prompts in the batch
    /// change the padded length, but not the image.
    func testBertPaddedToTheBatchGivesTheSameImageAloneOrInABatch() throws {
        let full = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self))
        let bert = try BertTextEncoder(directory: Fixtures.folder("text/bert"))
        bert.zeroPaddedStates = true
        let pipeline = try StableDiffusionPipeline(textEncoder: bert, unet: full.unet, vae: nil, scheduler: full.scheduler)
        XCTAssertTrue(pipeline.passesAttentionMask)
        let prompts = ["a cat", "a very long prompt about a dog sitting on the green grass in the sun", "bird"]
        XCTAssertGreaterThan(pipeline.encodePrompts(prompts).states.shape[1], pipeline.encodePrompts(["a cat"]).states.shape[1])
        let batch = try pipeline.generate(prompts: prompts, negativePrompt: "", steps: 3, guidance: 4, seed: 2)
        for i in prompts.indices {
            let alone = try pipeline.generate(prompts: [prompts[i]], steps: 3, guidance: 4, seed: 2, firstImageIndex: i)
            assertSameBits(alone, batch.narrowed(axis: 0, start: i, length: 1), "BERT image \(i)")
        }
    }

    // MARK: Guidance

    func testGuidanceOneIsTheConditionalPredictionAlone() throws {
        let pipeline = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self))
        let prompts = ["a cat", "a red bird"]
        let generated = try pipeline.generate(prompts: prompts, steps: 3, guidance: 1, seed: 5)

        // The same run written out with the pieces: conditional prediction only, one pass.
        let manual: Tensor = try noGrad {
            let schedule = try pipeline.scheduler.schedule(steps: 3)
            var x = Tensor.concat(prompts.indices.map { i in
                var generator = StableDiffusionPipeline.imageGenerator(seed: 5, index: i)
                return generator.normal([1, 4, 8, 8])
            }, axis: 0)
            let (states, mask) = pipeline.encodePrompts(prompts)
            for i in schedule.indices {
                let eps = pipeline.predictNoise(latents: x, timestep: schedule.timesteps[i], states: states, mask: mask)
                x = pipeline.scheduler.step(modelOutput: eps, index: i, of: schedule, sample: x, noise: nil).prevSample
            }
            return pipeline.decode(x)
        }
        assertSameBits(generated, manual, "guidance 1")

        // Just above 1 the two-pass path runs and agrees up to rounding.
        let guided = try pipeline.generate(prompts: prompts, steps: 3, guidance: 1.0001, seed: 5)
        XCTAssertLessThan(relativeError(guided, generated), 1e-2)
        let strong = try pipeline.generate(prompts: prompts, steps: 3, guidance: StableDiffusionPipeline.defaultGuidance, seed: 5)
        XCTAssertGreaterThan(relativeError(strong, generated), 1e-2)
    }

    func testGuidedOutputCombinesTheTwoPredictions() throws {
        let pipeline = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self))
        noGrad {
            var generator = RandomGenerator(seed: 3)
            let x = generator.normal([2, 4, 8, 8])
            let cond = pipeline.encodePrompts(["a cat", "a dog"]), uncond = pipeline.encodePrompts(["", ""])
            let eu = pipeline.modelOutput(latents: x, timestep: 501, states: uncond.states, mask: uncond.mask)
            let ec = pipeline.modelOutput(latents: x, timestep: 501, states: cond.states, mask: cond.mask)
            let guided = pipeline.guidedModelOutput(latents: x, timestep: 501, conditional: cond, unconditional: uncond, guidance: 3)
            assertClose(guided, eu + (ec - eu) * 3, tolerance: 1e-5, "ε_u + g(ε_c − ε_u)")
        }
    }

    // MARK: Partial runs and progress

    func testPartialRunStopsAtTheRequestedStepAndContinuesToTheFullRun() throws {
        let pipeline = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self))
        let full = try pipeline.sampleLatents(prompts: ["a cat"], steps: 5, guidance: 3, seed: 1)
        let start = try pipeline.sampleLatents(prompts: ["a cat"], steps: 5, guidance: 3, seed: 1, stopAtStep: 0)
        var generator = StableDiffusionPipeline.imageGenerator(seed: 1, index: 0)
        assertSameBits(start, generator.normal([1, 4, 8, 8]), "stopAtStep 0 is the initial noise")

        let partial = try pipeline.sampleLatents(prompts: ["a cat"], steps: 5, guidance: 3, seed: 1, stopAtStep: 2)
        let rest: Tensor = try noGrad {
            let schedule = try pipeline.scheduler.schedule(steps: 5)
            let (cond, uncond) = pipeline.conditioning(prompts: ["a cat"], negativePrompt: "", guidance: 3)
            var generators = [StableDiffusionPipeline.imageGenerator(seed: 1, index: 0)]
            return try pipeline.denoise(partial, conditional: cond, unconditional: uncond, guidance: 3, schedule: schedule,
                                        steps: 2..<5, generators: &generators)
        }
        assertSameBits(rest, full, "partial + rest")
        expectError(try pipeline.sampleLatents(prompts: ["a cat"], steps: 5, guidance: 3, seed: 1, stopAtStep: 6),
                    mentioning: ["stopAtStep 6"], "stop beyond the schedule")
    }

    func testProgressReportsEveryStep() throws {
        let pipeline = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self))
        var seen: [String] = []
        _ = try pipeline.generate(prompts: ["a cat"], steps: 4, guidance: 2, seed: 0) { seen.append("\($0)/\($1)") }
        XCTAssertEqual(seen, ["1/4", "2/4", "3/4", "4/4"])
    }

    // MARK: The denoising loop

    /// The observer sees every step's model input, output and new sample, and stopping after a
    /// step is the partial run that ends there; a swapped model drives the same loop.
    func testObserverSeesEveryStepAndCanStopTheRun() throws {
        let pipeline = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self), scheduler: .ddpm)
        let full = try pipeline.sampleLatents(prompts: ["a cat"], steps: 5, guidance: 3, seed: 1)
        let schedule = try pipeline.scheduler.schedule(steps: 5)
        let (cond, uncond) = pipeline.conditioning(prompts: ["a cat"], negativePrompt: "", guidance: 3)
        func run(model: UNet2DConditionModel? = nil, stopAfter: Int? = nil) throws -> (Tensor, [DenoisingStep]) {
            var generators = [StableDiffusionPipeline.imageGenerator(seed: 1, index: 0)]
            let x = initialNoise(shape: [1, 4, 8, 8], schedule: schedule, generators: &generators)
            var seen: [DenoisingStep] = []
            let result = try noGrad {
                try pipeline.denoise(x, conditional: cond, unconditional: uncond, guidance: 3, schedule: schedule,
                                     generators: &generators, model: model) { step in
                    seen.append(step)
                    return step.index == stopAfter ? .stop : .proceed
                }
            }
            return (result, seen)
        }
        let (result, seen) = try run()
        assertSameBits(result, full, "the observed run is the pipeline's")
        XCTAssertEqual(seen.map(\.index), [0, 1, 2, 3, 4])
        XCTAssertEqual(seen.map(\.timestep), schedule.timesteps)
        assertSameBits(seen[4].sample, full, "the last step's sample")
        let guided = noGrad {
            pipeline.guidedModelOutput(latents: seen[2].modelInput, timestep: seen[2].timestep, conditional: cond,
                                       unconditional: uncond, guidance: 3)
        }
        assertSameBits(seen[2].modelOutput, guided, "the step's guided output")
        assertSameBits(seen[2].modelInput, seen[1].sample, "DDPM's model input is the sample")

        let (stopped, stoppedSeen) = try run(stopAfter: 1)
        XCTAssertEqual(stoppedSeen.count, 2)
        assertSameBits(stopped, try pipeline.sampleLatents(prompts: ["a cat"], steps: 5, guidance: 3, seed: 1, stopAtStep: 2),
                       "stopped after step 1")

        let other = try pipeline.unet.copy()
        for (_, p) in other.namedParameters() { for i in 0..<p.count { p.pointer[i] *= 0.5 } }
        let (swapped, _) = try run(model: other)
        let otherPipeline = try StableDiffusionPipeline(textEncoder: pipeline.textEncoder, unet: other, vae: pipeline.vae,
                                                        scheduler: pipeline.scheduler)
        assertSameBits(swapped, try otherPipeline.sampleLatents(prompts: ["a cat"], steps: 5, guidance: 3, seed: 1), "swapped model")
        XCTAssertGreaterThan(relativeError(swapped, full), 1e-3)
    }

    /// The loop needs only a closure from (input, timestep) to the output the scheduler steps
    /// with, and stops at the first step whose sample is not finite, naming it.
    func testNonFiniteSampleStopsTheLoopNamingTheStep() throws {
        let scheduler = try DDIMScheduler(config: SchedulerConfig())
        let schedule = try scheduler.schedule(steps: 6)
        var generators = [RandomGenerator(seed: 1)]
        let x = initialNoise(shape: [1, 2, 4, 4], schedule: schedule, generators: &generators)
        var calls = 0
        XCTAssertThrowsError(try denoise(x, scheduler: scheduler, schedule: schedule, generators: &generators) { input, _ in
            calls += 1
            return calls == 3 ? input * Float.infinity : input * 0.5
        }) { error in
            XCTAssertEqual(error as? PipelineError, .nonFiniteSample(step: 3, of: 6, timestep: schedule.timesteps[2]))
            XCTAssertTrue("\(error)".contains("non-finite activations detected in sampling at step 3/6"), "\(error)")
        }
        XCTAssertEqual(calls, 3, "no step after the bad one")

        let pipeline = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self))
        pipeline.unet.conv_out.weight.pointer[0] = .nan
        expectError(try pipeline.generate(prompts: ["a cat"], steps: 3, guidance: 2, seed: 0),
                    mentioning: ["non-finite activations detected in sampling at step 1/3"], "NaN weight")
    }

    /// A flow model's velocity drives the same loop: with the exact velocity ε − x₀ of the
    /// straight path, flow-matching Euler steps from ε land on x₀.
    func testFlowMatchingRunsTheSameLoop() throws {
        let scheduler = try FlowMatchEulerDiscreteScheduler()
        let schedule = try scheduler.schedule(steps: 4)
        var g = RandomGenerator(seed: 2)
        let x0 = g.normal([1, 2, 4, 4])
        var generators = [RandomGenerator(seed: 3)]
        let noise = initialNoise(shape: [1, 2, 4, 4], schedule: schedule, generators: &generators)
        var timesteps: [Float] = []
        let result = try denoise(noise, scheduler: scheduler, schedule: schedule, generators: &generators) { _, t in
            timesteps.append(t)
            return noise - x0
        }
        XCTAssertEqual(timesteps, schedule.timesteps)
        assertClose(result, x0, tolerance: 1e-5, "Euler on a straight path")
    }

    func testPredictNoiseRecordsGradientsForTraining() throws {
        let pipeline = try StableDiffusionPipeline(directory: try PipelineFixture.folder(self))
        let key = pipeline.unet.stateDict()["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"]!
        pipeline.unet.freeze()
        pipeline.unet.unfreeze { $0.contains("attn2.to_k") }
        var generator = RandomGenerator(seed: 4)
        let x = generator.normal([1, 4, 8, 8])
        let (states, mask) = noGrad { pipeline.encodePrompts(["a cat"]) }
        let eps = pipeline.predictNoise(latents: x, timestep: 400, states: states, mask: mask)
        mseLoss(eps, Tensor.zeros(eps.shape)).backward()
        XCTAssertNotNil(key.grad)
        XCTAssertGreaterThan(key.grad!.scalars.map(abs).max()!, 0)
        // Another UNet of the same architecture for one call (ESD's frozen copy).
        let frozen = try UNet2DConditionModel(directory: PipelineFixture.source.appendingPathComponent("unet"))
        noGrad {
            assertSameBits(pipeline.predictNoise(latents: x, timestep: 400, states: states, mask: mask, model: frozen),
                           eps.detached(), "same weights, same output")
        }
        // x̂₀ from ε̂ at t: (x − √(1−ᾱ)ε̂)/√ᾱ.
        let alpha = Float(pipeline.scheduler.alphasCumprod[400])
        let x0 = noGrad { pipeline.predictedOriginal(latents: x, modelOutput: eps.detached(), timestep: 400) }
        assertClose(x0, (x - eps.detached() * (1 - alpha).squareRoot()) * (1 / alpha.squareRoot()), tolerance: 1e-5, "x̂₀")
    }

    // MARK: Pixel space

    func testPixelSpacePipelineHasNoVAE() throws {
        let folder = try PipelineFixture.folder(self)
        let full = try StableDiffusionPipeline(directory: folder)
        let pipeline = try StableDiffusionPipeline(textEncoder: full.textEncoder, unet: full.unet, vae: nil,
                                                   scheduler: full.scheduler)
        XCTAssertEqual(pipeline.vaeScaleFactor, 1)
        let images = try pipeline.generate(prompts: ["a cat", "a dog"], steps: 2, guidance: 3, seed: 0)
        XCTAssertEqual(images.shape, [2, 4, 8, 8])
        assertSameBits(images, try pipeline.generate(prompts: ["a cat", "a dog"], steps: 2, guidance: 3, seed: 0), "again")
        // Also from a folder whose model_index.json has no VAE.
        try FileManager.default.removeItem(at: folder.appendingPathComponent("vae"))
        try rewriteIndex(folder) { $0["vae"] = [NSNull(), NSNull()] }
        let loaded = try StableDiffusionPipeline(directory: folder)
        XCTAssertNil(loaded.vae)
        assertSameBits(try loaded.generate(prompts: ["a cat", "a dog"], steps: 2, guidance: 3, seed: 0), images, "loaded")
    }

    // MARK: Loading variants

    func testHalfPrecisionAndShardedWeightsLoad() throws {
        let folder = try PipelineFixture.folder(self)
        let base = try StableDiffusionPipeline(directory: folder)
        let unetFolder = folder.appendingPathComponent("unet")
        let weights = unetFolder.appendingPathComponent("diffusion_pytorch_model.safetensors")
        let parameters = base.unet.namedParameters()

        // A sharded index with two F32 shards (the fixture's values are F16-exact, so equal bits).
        try FileManager.default.removeItem(at: weights)
        var weightMap: [String: String] = [:]
        let half = parameters.count / 2
        for (shard, slice) in [(1, parameters[..<half]), (2, parameters[half...])] {
            let name = "diffusion_pytorch_model-0000\(shard)-of-00002.safetensors"
            try Tensor.save(Dictionary(uniqueKeysWithValues: slice.map { ($0.name, $0.tensor) }),
                            to: unetFolder.appendingPathComponent(name))
            for (key, _) in slice { weightMap[key] = name }
        }
        let index: [String: Any] = ["metadata": ["total_size": 4 * base.unet.parameterCount], "weight_map": weightMap]
        try JSONSerialization.data(withJSONObject: index)
            .write(to: unetFolder.appendingPathComponent("diffusion_pytorch_model.safetensors.index.json"))
        let sharded = try StableDiffusionPipeline(directory: folder)
        for ((name, a), (_, b)) in zip(parameters, sharded.unet.namedParameters()) { assertSameBits(b, a, "sharded \(name)") }

        // fp16 / bf16 variants (diffusion_pytorch_model.<variant>.safetensors) as the only weights:
        // read with the variant asked for; without one, an error that names the variants (diffusers
        // reads only the plain file then).
        for (variant, dtype) in [("fp16", DType.f16), ("bf16", .bf16)] {
            for file in try FileManager.default.contentsOfDirectory(atPath: unetFolder.path) where file.contains("safetensors") {
                try FileManager.default.removeItem(at: unetFolder.appendingPathComponent(file))
            }
            try base.unet.save(to: unetFolder, dtype: dtype, variant: variant)
            XCTAssertTrue(FileManager.default.fileExists(atPath: unetFolder.appendingPathComponent("diffusion_pytorch_model.\(variant).safetensors").path))
            let loaded = try StableDiffusionPipeline(directory: folder, variant: variant)
            for ((name, a), (_, b)) in zip(parameters, loaded.unet.namedParameters()) {
                if dtype == .f16 { assertSameBits(b, a, "f16 \(name)") } else {
                    XCTAssertLessThanOrEqual(relativeError(b, a), 1.0 / 128, "bf16 \(name)")
                }
            }
        }
        expectError(try StableDiffusionPipeline(directory: folder),
                    mentioning: [unetFolder.path, "holds the variant bf16", "--variant bf16"], "no variant asked, only bf16 present")
        expectError(try StableDiffusionPipeline(directory: folder, variant: "ema"), mentioning: [folder.path, "ema"],
                    "a variant no component has")
    }

    // MARK: Errors

    func rewriteIndex(_ folder: URL, _ edit: (inout [String: Any]) -> Void) throws {
        let url = folder.appendingPathComponent("model_index.json")
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        edit(&object)
        try JSONSerialization.data(withJSONObject: object).write(to: url)
    }

    func testMissingOrMalformedModelIndexIsNamed() throws {
        let folder = try PipelineFixture.folder(self)
        let index = folder.appendingPathComponent("model_index.json")
        let original = try Data(contentsOf: index)
        try FileManager.default.removeItem(at: index)
        expectError(try StableDiffusionPipeline(directory: folder), mentioning: [index.path, "not found"], "missing index")
        try Data("{\"unet\": [\"diffusers\"".utf8).write(to: index)
        expectError(try StableDiffusionPipeline(directory: folder), mentioning: [index.path, "not valid JSON"], "truncated index")
        try Data("[1, 2]".utf8).write(to: index)
        expectError(try StableDiffusionPipeline(directory: folder), mentioning: [index.path, "JSON object"], "not an object")
        try original.write(to: index)
        try rewriteIndex(folder) { $0["unet"] = ["diffusers"] }
        expectError(try StableDiffusionPipeline(directory: folder), mentioning: [index.path, "\"unet\""], "bad entry")
        try rewriteIndex(folder) { $0["unet"] = ["diffusers", "UNet2DModel"] }
        expectError(try StableDiffusionPipeline(directory: folder), mentioning: [index.path, "UNet2DModel"], "other UNet class")
    }

    func testMissingUNetFolderAndWeightsAreNamed() throws {
        let folder = try PipelineFixture.folder(self)
        let unet = folder.appendingPathComponent("unet")
        let weights = unet.appendingPathComponent("diffusion_pytorch_model.safetensors")
        let moved = folder.appendingPathComponent("unet-weights.safetensors")
        try FileManager.default.moveItem(at: weights, to: moved)
        expectError(try StableDiffusionPipeline(directory: folder), mentioning: [weights.path], "missing weights")
        try FileManager.default.moveItem(at: moved, to: weights)
        try FileManager.default.removeItem(at: unet.appendingPathComponent("config.json"))
        expectError(try StableDiffusionPipeline(directory: folder), mentioning: [unet.appendingPathComponent("config.json").path],
                    "missing config")
        try FileManager.default.removeItem(at: unet)
        expectError(try StableDiffusionPipeline(directory: folder), mentioning: [unet.path, "not found"], "missing unet folder")
    }

    func testMisShapedWeightNamesFileAndKey() throws {
        let folder = try PipelineFixture.folder(self)
        let weights = folder.appendingPathComponent("unet/diffusion_pytorch_model.safetensors")
        var tensors = try TensorArchive(contentsOf: weights).allTensors()
        tensors["conv_in.weight"] = Tensor.zeros([16, 4, 3, 2])
        try Tensor.save(tensors, to: weights)
        expectError(try StableDiffusionPipeline(directory: folder),
                    mentioning: [weights.path, "conv_in.weight", "[16, 4, 3, 2]", "[16, 4, 3, 3]"], "mis-shaped")
    }

    func testTextEncoderThatCannotBeBuiltMustBePassedIn() throws {
        let folder = try PipelineFixture.folder(self)
        let clip = try CLIPTextEncoder(directory: folder)
        try FileManager.default.removeItem(at: folder.appendingPathComponent("text_encoder"))
        try rewriteIndex(folder) {
            $0["text_encoder"] = ["sentence-transformers", "all-MiniLM-L6-v2"]
            $0["tokenizer"] = ["transformers", "BertTokenizer"]
        }
        expectError(try StableDiffusionPipeline(directory: folder),
                    mentioning: ["model_index.json", "all-MiniLM-L6-v2", "pass one in"], "MiniLM")
        let pipeline = try StableDiffusionPipeline(directory: folder, textEncoder: clip)
        XCTAssertTrue(pipeline.textEncoder === clip)
        // A CLIP folder that is missing is named.
        try rewriteIndex(folder) {
            $0["text_encoder"] = ["transformers", "CLIPTextModel"]
            $0["tokenizer"] = ["transformers", "CLIPTokenizer"]
        }
        expectError(try StableDiffusionPipeline(directory: folder),
                    mentioning: [folder.appendingPathComponent("text_encoder").path], "missing text_encoder folder")
    }

    func testUnsupportedSchedulerNeedsAnOverride() throws {
        let folder = try PipelineFixture.folder(self)
        let config = folder.appendingPathComponent("scheduler/scheduler_config.json")
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: config)) as! [String: Any]
        object["_class_name"] = "PNDMScheduler"
        try JSONSerialization.data(withJSONObject: object).write(to: config)
        XCTAssertTrue(try StableDiffusionPipeline(directory: folder).scheduler is PNDMScheduler, "SD 1.x folders ship PNDM")
        object["_class_name"] = "LMSDiscreteScheduler"
        try JSONSerialization.data(withJSONObject: object).write(to: config)
        expectError(try StableDiffusionPipeline(directory: folder), mentioning: [config.path, "LMSDiscreteScheduler", "--scheduler"],
                    "LMS")
        XCTAssertTrue(try StableDiffusionPipeline(directory: folder, scheduler: .ddim).scheduler is DDIMScheduler)
        XCTAssertTrue(try StableDiffusionPipeline(directory: folder, scheduler: .eulerDiscrete).scheduler is EulerDiscreteScheduler)
    }

    func testComponentsThatDoNotFitAreRejected() throws {
        let folder = try PipelineFixture.folder(self)
        let pipeline = try StableDiffusionPipeline(directory: folder)
        let narrow = try UNet2DConditionModel(directory: Fixtures.folder("unet_sd1"))  // cross_attention_dim 24
        expectError(try StableDiffusionPipeline(textEncoder: pipeline.textEncoder, unet: narrow, vae: pipeline.vae,
                                                scheduler: pipeline.scheduler),
                    mentioning: ["hidden size is 32", "cross_attention_dim is 24"], "widths")
        expectError(try pipeline.generate(prompts: ["a"], steps: 2, guidance: 2, seed: 0, initialNoise: Tensor.zeros([1, 4, 4, 4])),
                    mentioning: ["[1, 4, 4, 4]", "[1, 4, 8, 8]"], "noise shape")
        expectError(try pipeline.generate(prompts: [], steps: 2, guidance: 2, seed: 0), mentioning: ["no prompts"], "no prompts")
    }
}
