import Foundation

// Foundation's and Codable's errors as a user reads them: the file, the key and the problem,
// never Swift's coding-path dump or an `NSCocoaErrorDomain Code=…` line. Every layer that reads
// JSON or files words its messages with these.

extension DecodingError {
    /// The key path of the value at fault: "inner.steps", "layers[3].name" ("" at the top level).
    /// `snakeCase` spells camelCase keys as the file does, for decoders that convert from snake case.
    public func keyPath(snakeCase: Bool = false) -> String {
        var path: [any CodingKey]
        switch self {
        case let .keyNotFound(key, context): path = context.codingPath + [key]
        case let .typeMismatch(_, context), let .valueNotFound(_, context), let .dataCorrupted(context): path = context.codingPath
        @unknown default: path = []
        }
        var text = ""
        for key in path {
            if let index = key.intValue { text += "[\(index)]"; continue }
            let name = !snakeCase ? key.stringValue : key.stringValue.reduce(into: "") { out, ch in
                if ch.isUppercase { out += "_" + ch.lowercased() } else { out.append(ch) }
            }
            text += (text.isEmpty ? "" : ".") + name
        }
        return text
    }

    /// What is wrong at `keyPath`: "missing", "expected a whole number", "not valid JSON", ….
    public var reason: String {
        switch self {
        case .keyNotFound: return "missing"
        case let .typeMismatch(type, _): return "expected \(jsonTypeName(type))"
        case let .valueNotFound(type, _): return "expected \(jsonTypeName(type)), found null"
        case let .dataCorrupted(context):
            if context.codingPath.isEmpty, context.underlyingError != nil { return "not valid JSON" }
            return context.debugDescription
        @unknown default: return "\(self)"
        }
    }

    /// "key \"inner.steps\": expected a whole number", or the reason alone at the top level.
    public var readableDescription: String {
        let path = keyPath()
        return path.isEmpty ? reason : "key \"\(path)\": \(reason)"
    }
}

/// How a JSON file spells a Swift type: "a whole number", "a number", "a string", ….
public func jsonTypeName(_ type: Any.Type) -> String {
    switch type {
    case is Int.Type, is Int32.Type, is Int64.Type, is UInt.Type, is UInt32.Type, is UInt64.Type: return "a whole number"
    case is Float.Type, is Double.Type: return "a number"
    case is Bool.Type: return "true or false"
    case is String.Type: return "a string"
    default:
        let name = "\(type)"
        if name.hasPrefix("Array<") { return "an array" }
        if name.hasPrefix("Dictionary<") { return "an object" }
        return name
    }
}

/// "<path>: <reason>" of a Foundation file error (no such file, permission denied, …); nil for
/// any other error.
public func readableFileError(_ error: Error) -> String? {
    guard let reason = readableFileReason(error) else { return nil }
    let error = error as NSError
    let path = (error.userInfo[NSFilePathErrorKey] as? String) ?? (error.userInfo[NSURLErrorKey] as? URL)?.path
    return path.map { "\($0): \(reason)" } ?? reason
}

/// The reason alone of a Foundation file error ("no such file or folder"); nil for any other error.
public func readableFileReason(_ error: Error) -> String? {
    let error = error as NSError
    guard error.domain == NSCocoaErrorDomain || error.domain == NSPOSIXErrorDomain else { return nil }
    let posix = error.domain == NSPOSIXErrorDomain ? error : (error.userInfo[NSUnderlyingErrorKey] as? NSError).flatMap {
        $0.domain == NSPOSIXErrorDomain ? $0 : nil
    }
    let reason: String
    if let posix {
        reason = String(cString: strerror(Int32(posix.code)))
    } else {
        switch CocoaError.Code(rawValue: error.code) {
        case .fileNoSuchFile, .fileReadNoSuchFile: reason = "no such file or folder"
        case .fileReadNoPermission, .fileWriteNoPermission: reason = "permission denied"
        case .fileWriteOutOfSpace: reason = "no space left on the device"
        case .fileWriteVolumeReadOnly: reason = "read-only file system"
        case .fileWriteFileExists: reason = "already exists"
        case .fileReadCorruptFile: reason = "cannot be read (corrupt or not the expected format)"
        case .fileReadInapplicableStringEncoding: reason = "is not UTF-8 text"
        default: reason = "file error \(error.code)"
        }
    }
    return reason
}

/// A JSON file of settings laid over defaults: every key must be one the defaults encode, with a
/// value of the type the defaults hold there. Errors name the file and the key.
public enum JSONOverlay {
    /// `base` with the keys of the JSON object in `url` over it; an error is "<file>: <reason>".
    public static func decode<T: Codable>(_ url: URL, over base: T) throws -> T {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw JSONOverlayError(file: url, reason: "cannot be read (\(readableFileReason(error) ?? "\(error)"))")
        }
        guard let file = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw JSONOverlayError(file: url, reason: "not a JSON object")
        }
        let defaults = try JSONSerialization.jsonObject(with: JSONEncoder().encode(base)) as! [String: Any]
        for key in file.keys where defaults[key] == nil {
            throw JSONOverlayError(file: url, reason: "unknown key '\(key)' (known: \(defaults.keys.sorted().joined(separator: ", ")))")
        }
        func decoded(_ keys: some Sequence<String>) throws -> T {
            var merged = defaults
            for key in keys { merged[key] = file[key] }
            return try JSONInput.decode(T.self, from: JSONSerialization.data(withJSONObject: merged))
        }
        do { return try decoded(file.keys) } catch {
            // Each key alone over the defaults: Foundation's decoder does not always say which key
            // failed (a fraction for an integer comes with an empty coding path on Linux).
            for key in file.keys.sorted() where (try? decoded([key])) == nil {
                let value = (try? JSONSerialization.data(withJSONObject: [file[key]!])).map { String(decoding: $0.dropFirst().dropLast(), as: UTF8.self) } ?? "?"
                throw JSONOverlayError(file: url, reason: "key '\(key)' must be \(expectation(of: base, key: key)), not \(value)")
            }
            throw JSONOverlayError(file: url, reason: (error as? DecodingError)?.readableDescription ?? "\(error)")
        }
    }

    /// What the property `key` of `base` holds, as JSON spells it (an enum: its raw values).
    static func expectation(of base: Any, key: String) -> String {
        guard var value = Mirror(reflecting: base).children.first(where: { $0.label == key })?.value else { return "of another type" }
        var optional = ""
        let mirror = Mirror(reflecting: value)
        if mirror.displayStyle == .optional {
            optional = " or null"
            guard let wrapped = mirror.children.first?.value else { return "of another type" }
            value = wrapped
        }
        if let cases = type(of: value) as? any CaseIterable.Type {
            return "one of " + caseNames(cases).joined(separator: ", ") + optional
        }
        return jsonTypeName(type(of: value)) + optional
    }

    private static func caseNames<C: CaseIterable>(_ type: C.Type) -> [String] {
        type.allCases.map { value in (value as? any RawRepresentable).map { "\($0.rawValue)" } ?? "\(value)" }
    }
}

public struct JSONOverlayError: Error, CustomStringConvertible {
    public var file: URL
    public var reason: String
    public var description: String { "\(file.path): \(reason)" }
}
