import Foundation

/// Output paths checked before any work starts, so that a run never fails at its last step, and
/// never writes into the working directory or over something that is not a plain file or folder.
public enum OutputPath {
    /// A folder a command writes into: named (not ""), a folder when it exists (or a link to
    /// one), and otherwise creatable: its nearest existing ancestor is a writable folder.
    public static func folder(_ path: String, flag: String) throws -> URL {
        let url = try named(path, flag: flag)
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) {
            guard isFolder.boolValue else { throw EvaluationError.invalidRequest("\(flag) \(url.path) exists and is not a folder") }
            guard FileManager.default.isWritableFile(atPath: url.path) else {
                throw EvaluationError.invalidRequest("\(flag) \(url.path) is not writable")
            }
            return url
        }
        try checkCreatable(url, flag: flag)
        return url
    }

    /// A file a command writes (atomically, by renaming a temporary file over it): named, a
    /// regular file when it exists (never a link, FIFO, device or folder), in a folder that
    /// exists or can be created and is writable.
    public static func file(_ path: String, flag: String) throws -> URL {
        let url = try named(path, flag: flag)
        if let type = try? FileManager.default.attributesOfItem(atPath: url.path)[.type] as? FileAttributeType {
            guard type == .typeRegular else {
                throw EvaluationError.invalidRequest("\(flag) \(url.path) exists and is not a regular file (\(describe(type))); it is not replaced")
            }
        }
        let parent = url.deletingLastPathComponent()
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: parent.path, isDirectory: &isFolder) {
            guard isFolder.boolValue, FileManager.default.isWritableFile(atPath: parent.path) else {
                throw EvaluationError.invalidRequest("\(flag) \(url.path): its folder \(parent.path) is not a writable folder")
            }
        } else {
            try checkCreatable(parent, flag: flag)
        }
        return url
    }

    static func named(_ path: String, flag: String) throws -> URL {
        guard !path.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw EvaluationError.invalidRequest("\(flag) is empty: name a path")
        }
        return URL(fileURLWithPath: path).standardizedFileURL
    }

    /// `url` does not exist: the nearest ancestor that does must be a writable folder.
    static func checkCreatable(_ url: URL, flag: String) throws {
        var ancestor = url.deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: ancestor.path), ancestor.path != "/" {
            ancestor = ancestor.deletingLastPathComponent()
        }
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: ancestor.path, isDirectory: &isFolder), isFolder.boolValue else {
            throw EvaluationError.invalidRequest("\(flag) \(url.path) cannot be created: \(ancestor.path) is not a folder")
        }
        guard FileManager.default.isWritableFile(atPath: ancestor.path) else {
            throw EvaluationError.invalidRequest("\(flag) \(url.path) cannot be created: \(ancestor.path) is not writable")
        }
    }

    static func describe(_ type: FileAttributeType) -> String {
        switch type {
        case .typeDirectory: return "a folder"
        case .typeSymbolicLink: return "a symbolic link"
        case .typeCharacterSpecial, .typeBlockSpecial: return "a device"
        case .typeSocket: return "a socket"
        default: return "a FIFO or other special file"
        }
    }
}

/// Bytes of memory the system can give this process now: MemAvailable on Linux, else the
/// physical memory.
public func availableMemoryBytes() -> Double {
    if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
       let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
       let kilobytes = Double(line.split(separator: " ").dropFirst().first ?? "") {
        return kilobytes * 1024
    }
    return Double(ProcessInfo.processInfo.physicalMemory)
}
