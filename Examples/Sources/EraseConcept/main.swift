// Loads a diffusers pipeline folder, erases a concept from its UNet with UCE (closed form) and
// with SCORE (fine-tuning), and saves each erased model. `score erase` does the same from the
// command line; this is the library route.
//
//     swift run -c release --package-path Examples EraseConcept <pipeline-folder> <concept> <out-folder> [score-steps]
import Diffusion
import Erasure
import Foundation

let arguments = CommandLine.arguments
guard arguments.count >= 4, arguments.count <= 5 else {
    print("usage: EraseConcept <pipeline-folder> <concept> <out-folder> [score-steps, default 50]")
    exit(2)
}
let folder = URL(fileURLWithPath: arguments[1])
let concept = arguments[2]
let out = URL(fileURLWithPath: arguments[3])
let scoreSteps = arguments.count == 5 ? Int(arguments[4]) : 50
guard let scoreSteps, scoreSteps >= 1 else {
    print("score-steps must be a positive integer")
    exit(2)
}

do {
    // What to erase (the concept's prompts, mapped towards the empty prompt) and what to keep.
    let request = ErasureRequest(
        concepts: [Concept(name: concept, targetPrompts: ["a photo of a \(concept)", "\(concept)"], anchor: "")],
        retainPrompts: ["a photo of a dog", "a landscape painting", "a portrait of a woman"])

    // UCE edits the cross-attention projections in closed form.
    let uce = try StableDiffusionPipeline(directory: folder)
    var uceJob = EraseJob(method: UCE(), request: request, baseFolder: folder, baseName: folder.path,
                          output: out.appendingPathComponent("uce"))
    uceJob.leakage = nil  // the leakage estimate samples many trajectories; `score evaluate` measures it
    try uceJob.run(pipeline: uce) { print("uce: \($0)") }

    // SCORE fine-tunes the UNet (a fresh copy of the model) against an adversarial critic.
    let score = try StableDiffusionPipeline(directory: folder)
    var config = SCOREConfig()
    config.steps = scoreSteps
    var scoreJob = EraseJob(method: SCORE(config: config), request: request, baseFolder: folder, baseName: folder.path,
                            output: out.appendingPathComponent("score"))
    scoreJob.leakage = nil
    try scoreJob.run(pipeline: score) { print("score: \($0)") }

    // Each output's model/ folder loads over the base model (`score generate --model OUT/uce/model`).
    print("wrote \(out.appendingPathComponent("uce/model").path) and \(out.appendingPathComponent("score/model").path)")
} catch {
    print("error: \(error)")
    exit(1)
}
