import Glibc

// printf-style numbers and the few string and path helpers the trainer needs, without Foundation.

/// `spec` formatted as Foundation's String(format:) would: C's printf conversions for numbers (Int,
/// Int32, UInt64, Double, ...), `%@` for any value's description, `%%` for a percent sign.
public func format(_ spec: String, _ args: Any...) -> String {
    let bytes = Array(spec.utf8)
    var out = "", i = 0, next = 0
    func argument() -> Any? {
        defer { next += 1 }
        return next < args.count ? args[next] : nil
    }
    while i < bytes.count {
        guard bytes[i] == UInt8(ascii: "%") else {
            let start = i
            while i < bytes.count && bytes[i] != UInt8(ascii: "%") { i += 1 }
            out += String(decoding: bytes[start..<i], as: UTF8.self)
            continue
        }
        var end = i + 1
        while end < bytes.count, !conversions.contains(bytes[end]) { end += 1 }
        guard end < bytes.count else { out += String(decoding: bytes[i...], as: UTF8.self); break }
        let piece = String(decoding: bytes[i...end], as: UTF8.self)
        switch bytes[end] {
        case UInt8(ascii: "%"): out += "%"
        case UInt8(ascii: "@"): out += argument().map { "\($0)" } ?? "(missing)"
        default:
            guard let value = argument() as? CVarArg else { out += "(missing)"; break }
            // Swift's Int passes 64 bits where C's %d reads an int: widened to %ld, so counts past 2^31 print whole.
            let wide = (value is Int || value is UInt || value is Int64 || value is UInt64)
                && "diouxX".utf8.contains(bytes[end]) && !"hljztqL".utf8.contains(bytes[end - 1])
            out += printf(wide ? String(decoding: bytes[i..<end] + [UInt8(ascii: "l"), bytes[end]], as: UTF8.self) : piece, value)
        }
        i = end + 1
    }
    return out
}

private let conversions = Set("diouxXeEfFgGaAcs@%".utf8)

/// One printf conversion of one value.
private func printf(_ piece: String, _ value: CVarArg) -> String {
    var buffer = [CChar](repeating: 0, count: 128)
    let needed = Int(withVaList([value]) { vsnprintf(&buffer, buffer.count, piece, $0) })
    if needed >= buffer.count {
        buffer = [CChar](repeating: 0, count: needed + 1)
        _ = withVaList([value]) { vsnprintf(&buffer, buffer.count, piece, $0) }
    }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

extension StringProtocol {
    /// Without leading and trailing white space and newlines.
    public var trimmed: String {
        let scalars = String(self).unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[first...last])
    }

    /// Cut or filled with spaces on the right to `length` characters.
    public func padded(to length: Int) -> String {
        count >= length ? String(prefix(length)) : String(self) + String(repeating: " ", count: length - count)
    }
}

/// The directory part of `path`, as NSString's deletingLastPathComponent gives it: "a/b/c" → "a/b",
/// "a" → "", "/a" → "/", trailing slashes ignored.
public func parentDirectory(_ path: String) -> String {
    var p = Substring(path)
    while p.count > 1, p.hasSuffix("/") { p = p.dropLast() }
    guard let slash = p.lastIndex(of: "/") else { return "" }
    if slash == p.startIndex { return "/" }
    var parent = p[..<slash]
    while parent.count > 1, parent.hasSuffix("/") { parent = parent.dropLast() }
    return String(parent)
}
