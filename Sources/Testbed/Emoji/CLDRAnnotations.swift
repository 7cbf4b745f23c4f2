import Foundation

/// A CLDR annotations file that cannot be read, with the file and line.
public struct CLDRError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let line: Int
    public let reason: String
    public var description: String { "\(file):\(line): \(reason)" }
}

/// One character's English annotation from CLDR: its name (the `type="tts"` entry) and keywords.
public struct CLDRAnnotation: Equatable, Sendable {
    /// The annotated characters, without U+FE0F (CLDR removes variation selectors).
    public let characters: String
    public var name: String?
    public var keywords: [String]
}

/// Reads CLDR's `common/annotations/<locale>.xml`.
///
/// The format is simple and fixed (LDML, one `<annotation cp="…">a | b | c</annotation>` per line,
/// and a second with `type="tts"` holding the name), so it is scanned directly rather than through
/// an XML library, which Foundation only offers on Linux through libxml2. Entities (`&amp;`,
/// `&#x…;`) are decoded; anything else malformed fails with the file and line.
public enum CLDRAnnotations {
    public static func load(_ url: URL) throws -> [String: CLDRAnnotation] {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw CLDRError(file: url.path, line: 0, reason: "cannot read: \(error.localizedDescription)")
        }
        return try parse(data, file: url.path)
    }

    /// Annotations by their characters.
    ///
    /// Scans Unicode scalars, not Characters: a skin-tone modifier right after a quote would
    /// otherwise merge with it into one grapheme (`"🏻` is a single Swift Character).
    public static func parse(_ data: Data, file: String) throws -> [String: CLDRAnnotation] {
        guard let text = String(data: data, encoding: .utf8) else {
            throw CLDRError(file: file, line: 0, reason: "not UTF-8")
        }
        guard text.contains("<ldml"), text.contains("<annotations") else {
            throw CLDRError(file: file, line: 1, reason: "not a CLDR annotations file (no <ldml> with <annotations>)")
        }
        let open = Array("<annotation".unicodeScalars), close = Array("</annotation>".unicodeScalars)
        var result: [String: CLDRAnnotation] = [:]
        for (lineIndex, rawLine) in try withoutComments(text, file: file).enumerated() {
            var line = rawLine
            while let first = line.first, first == " " || first == "\t" { line.removeFirst() }
            while let last = line.last, last == " " || last == "\t" || last == "\r" { line.removeLast() }
            guard line.starts(with: open), line.count > open.count, line[open.count] == " " || line[open.count] == ">" else { continue }
            let lineNumber = lineIndex + 1
            func fail(_ reason: String) -> CLDRError { CLDRError(file: file, line: lineNumber, reason: reason) }
            guard let tagEnd = line.firstIndex(of: ">") else { throw fail("<annotation> tag is not closed") }
            guard line.count >= tagEnd + 1 + close.count, Array(line.suffix(close.count)) == close else {
                throw fail("expected one <annotation>…</annotation> per line")
            }
            let attributes = try parseAttributes(Array(line[open.count..<tagEnd]), fail: fail)
            guard let cpRaw = attributes["cp"], !cpRaw.isEmpty else { throw fail("<annotation> without cp=\"…\"") }
            let characters = try decodeEntities(cpRaw, fail: fail)
            var bodyScalars = String.UnicodeScalarView()
            bodyScalars.append(contentsOf: line[(tagEnd + 1)..<(line.count - close.count)])
            let body = try decodeEntities(String(bodyScalars), fail: fail).trimmingCharacters(in: .whitespaces)
            guard !body.isEmpty else { throw fail("empty annotation for \(characters)") }
            if result[characters] == nil {
                result[characters] = CLDRAnnotation(characters: characters, name: nil, keywords: [])
            }
            switch attributes["type"] {
            case nil:
                result[characters]!.keywords = body.split(separator: "|")
                    .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            case "tts":
                result[characters]!.name = body
            case let other?:
                throw fail("unknown annotation type \"\(other)\" for \(characters)")
            }
        }
        guard !result.isEmpty else { throw CLDRError(file: file, line: 1, reason: "no <annotation> elements") }
        return result
    }

    /// The text as lines of scalars with `<!-- … -->` comments blanked out (their line breaks
    /// kept, so line numbers stay right): CLDR comments out some entries.
    private static func withoutComments(_ text: String, file: String) throws -> [[Unicode.Scalar]] {
        let scalars = Array(text.unicodeScalars)
        let open = Array("<!--".unicodeScalars), close = Array("-->".unicodeScalars)
        var lines: [[Unicode.Scalar]] = [[]]
        var i = 0, inComment = false
        while i < scalars.count {
            if !inComment, scalars[i] == "<", scalars[i...].starts(with: open) {
                inComment = true
                i += open.count
            } else if inComment, scalars[i] == "-", scalars[i...].starts(with: close) {
                inComment = false
                i += close.count
            } else {
                if scalars[i] == "\n" { lines.append([]) } else if !inComment { lines[lines.count - 1].append(scalars[i]) }
                i += 1
            }
        }
        guard !inComment else { throw CLDRError(file: file, line: lines.count, reason: "unterminated <!-- comment") }
        return lines
    }

    private static func parseAttributes(_ scalars: [Unicode.Scalar], fail: (String) -> CLDRError) throws -> [String: String] {
        var attributes: [String: String] = [:]
        var i = 0
        func string(_ range: Range<Int>) -> String {
            var view = String.UnicodeScalarView()
            view.append(contentsOf: scalars[range])
            return String(view)
        }
        while true {
            while i < scalars.count, scalars[i] == " " || scalars[i] == "\t" { i += 1 }
            if i == scalars.count { break }
            guard let equals = scalars[i...].firstIndex(of: "=") else { throw fail("malformed attributes: \(string(0..<scalars.count))") }
            let key = string(i..<equals).trimmingCharacters(in: .whitespaces)
            i = equals + 1
            guard i < scalars.count, scalars[i] == "\"" || scalars[i] == "'" else { throw fail("attribute \(key) is not quoted") }
            let quote = scalars[i]
            guard let end = scalars[(i + 1)...].firstIndex(of: quote) else { throw fail("attribute \(key) is not closed") }
            attributes[key] = string((i + 1)..<end)
            i = end + 1
        }
        return attributes
    }

    private static func decodeEntities(_ text: String, fail: (String) -> CLDRError) throws -> String {
        guard text.unicodeScalars.contains("&") else { return text }
        let scalars = Array(text.unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0
        while i < scalars.count {
            guard scalars[i] == "&" else { out.append(scalars[i]); i += 1; continue }
            guard let semicolon = scalars[i...].firstIndex(of: ";") else { throw fail("unterminated entity in \(text)") }
            var nameView = String.UnicodeScalarView()
            nameView.append(contentsOf: scalars[(i + 1)..<semicolon])
            let entity = String(nameView)
            switch entity {
            case "amp": out.append("&")
            case "lt": out.append("<")
            case "gt": out.append(">")
            case "quot": out.append("\"")
            case "apos": out.append("'")
            default:
                var value: UInt32?
                if entity.hasPrefix("#x") || entity.hasPrefix("#X") {
                    value = UInt32(entity.dropFirst(2), radix: 16)
                } else if entity.hasPrefix("#") {
                    value = UInt32(entity.dropFirst())
                }
                guard let value, let scalar = Unicode.Scalar(value) else { throw fail("unknown entity &\(entity);") }
                out.append(scalar)
            }
            i = semicolon + 1
        }
        return String(out)
    }
}
